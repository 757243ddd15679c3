"""The built-in GPT as a `spotray.Workload`: a nanoGPT-shaped model on a byte or token stream.

It uses the public API alone (`spotray.Workload`), as any user's workload does:

    workload:
      entrypoint: train.gpt:GPTWorkload
      args: {preset: tiny, source: builtin:pydoc}

Sample `i` is the window of `block_size + 1` tokens that starts at token `i`: inputs are its
first `block_size` tokens, targets the same shifted by one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from spotray import Workload
from train.data import BUILTIN_PYDOC, BYTE_VOCAB, Tokens, is_parquet_source, load_tokens
from train.presets import PRESETS, GPTConfig


def _s3_filesystem() -> Any:
    """pyarrow's S3 filesystem; it ignores AWS_ENDPOINT_URL, so honour it here (spotray sets
    AWS_ENDPOINT_URL_S3 and AWS_REGION from the config's `s3:` section)."""
    import pyarrow.fs as pafs

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    url = urlparse(endpoint)
    return pafs.S3FileSystem(
        region=region, endpoint_override=url.netloc, scheme=url.scheme, force_virtual_addressing=False
    )


def read_tokens(source: str) -> Tokens:
    """The token stream of `source`: builtin:pydoc, a text file, or Parquet shards (local or s3://)."""
    if source == BUILTIN_PYDOC or not is_parquet_source(source):
        return load_tokens(source)
    if source.startswith("s3://"):
        return load_tokens(source, _s3_filesystem(), source.removeprefix("s3://").rstrip("/"))
    import pyarrow.fs as pafs

    return load_tokens(source, pafs.LocalFileSystem(), str(Path(source).resolve()))


class GPTWorkload(Workload):
    """A GPT from a preset (`tiny`, `small`, `gpt2`, `gpt2-medium`, `gpt2-large`), with single
    dimensions changed by argument, trained on next-token prediction."""

    def __init__(
        self,
        preset: str = "tiny",
        n_layer: int | None = None,
        n_head: int | None = None,
        n_embd: int | None = None,
        block_size: int | None = None,
        vocab_size: int | None = None,
        dropout: float = 0.0,
        source: str = BUILTIN_PYDOC,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
        for name, value in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if block_size is not None and block_size <= 1:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layer, head, embd, block = PRESETS[preset]
        self.shape = dict(
            n_layer=n_layer or layer,
            n_head=n_head or head,
            n_embd=n_embd or embd,
            block_size=block_size or block,
        )
        if self.shape["n_embd"] % self.shape["n_head"]:
            raise ValueError(
                f"n_embd ({self.shape['n_embd']}) must be divisible by n_head ({self.shape['n_head']})"
            )
        if source.startswith("builtin:") and source != BUILTIN_PYDOC:
            raise ValueError(f"unknown builtin source {source!r}; the builtin source is {BUILTIN_PYDOC}")
        if "://" in source and not source.startswith("s3://"):
            raise ValueError(f"unsupported URI scheme in {source!r}: use a local path or s3://")
        if not ("://" in source or source == BUILTIN_PYDOC or Path(source).exists()):
            raise ValueError(f"no such file or folder: {source}")
        if vocab_size is not None and not is_parquet_source(source) and vocab_size != BYTE_VOCAB:
            raise ValueError(f"vocab_size must be {BYTE_VOCAB} for byte-level text")
        self.source = source
        self.vocab_size = vocab_size
        self.dropout = dropout
        self._tokens: Tokens | None = None
        self._ids: torch.Tensor | None = None

    @property
    def tokens(self) -> Tokens:
        if self._tokens is None:
            self._tokens = read_tokens(self.source)
            self._ids = torch.from_numpy(self._tokens.ids.astype("int64"))
            if len(self._ids) <= self.shape["block_size"] + 1:
                raise ValueError(
                    f"{self.source} has {len(self._ids)} tokens, fewer than one window of "
                    f"{self.shape['block_size'] + 1}"
                )
        return self._tokens

    def config(self) -> GPTConfig:
        return GPTConfig(
            **self.shape, vocab_size=self.vocab_size or self.tokens.vocab_size, dropout=self.dropout
        )

    def build_model(self) -> torch.nn.Module:
        from train.model import GPT

        return GPT(self.config())

    def num_samples(self) -> int:
        return len(self.tokens.ids) - self.shape["block_size"] - 1

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _ = self.tokens
        assert self._ids is not None
        window = self._ids[index : index + self.shape["block_size"] + 1]
        return window[:-1], window[1:]

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        _, loss = model(x, y)
        return loss

    def tokens_per_sample(self) -> int:
        return self.shape["block_size"]

    def preview(self, model: torch.nn.Module, new_tokens: int = 240) -> str | None:
        """A text sampled after 'The ', for a byte-level model: what it learned."""
        if self.config().vocab_size != BYTE_VOCAB:
            return None
        prompt = torch.tensor([list(b"The ")], dtype=torch.long)
        out = model.generate(prompt, new_tokens, generator=torch.Generator().manual_seed(0))
        return "(the model continues 'The ')\n" + bytes(out[0].tolist()).decode("utf-8", errors="replace")
