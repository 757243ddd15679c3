"""A Hugging Face causal LM as a spotray workload: a GPT-2 built from a config (no weights
downloaded), trained byte-level on Python's own documentation.

Needs `pip install 'spotray[hf]'` (transformers). Run from this folder:

    spotray train job.yaml
"""

from __future__ import annotations

import torch

from spotray import Workload


def pydoc_bytes() -> torch.Tensor:
    """About 465 KB of English that ships with every CPython (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


class HFCausalLM(Workload):
    """`GPT2LMHeadModel` from a `GPT2Config`; sample i is the `context` bytes from byte i."""

    def __init__(self, n_layer: int = 2, n_head: int = 4, n_embd: int = 128, context: int = 128) -> None:
        self.shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        self.context = context
        self._data: torch.Tensor | None = None

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            self._data = pydoc_bytes()
        return self._data

    def build_model(self) -> torch.nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=256,
            n_positions=self.context,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **self.shape,
        )
        model = GPT2LMHeadModel(config)
        model.loss_type = "ForCausalLM"  # what it picks anyway, without a warning
        return model

    def num_samples(self) -> int:
        return len(self.data) - self.context

    def sample(self, index: int) -> torch.Tensor:
        return self.data[index : index + self.context]

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch).loss  # the model shifts the labels itself

    def tokens_per_sample(self) -> int:
        return self.context
