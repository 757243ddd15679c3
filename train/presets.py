"""Model shapes, kept free of torch so a config validates in milliseconds.

The presets span a model that learns visibly in a few minutes on two CPU cores (`tiny`)
to GPT-2 sizes for GPUs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of the GPT; `vocab_size` 256 is byte-level text."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int = 256
    dropout: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


# name -> (n_layer, n_head, n_embd, block_size). Parameter counts are for vocab 256.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (4, 4, 128, 128),  # ~0.8M: trains visibly in minutes on 2 CPU cores
    "small": (6, 6, 384, 256),  # ~10.7M: nanoGPT's shakespeare-char shape
    "gpt2": (12, 12, 768, 1024),  # ~85M (+ the 50k-token embedding of real GPT-2)
    "gpt2-medium": (24, 16, 1024, 1024),  # ~302M
    "gpt2-large": (36, 20, 1280, 1024),  # ~708M
}
