"""Token sources: the builtin corpus, text files and Parquet shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from train.data import BUILTIN_PYDOC, BYTE_VOCAB, declared_vocab, load_tokens, write_token_shards


def test_builtin_pydoc_is_python_docs_as_bytes() -> None:
    tokens = load_tokens(BUILTIN_PYDOC)
    assert tokens.vocab_size == BYTE_VOCAB
    assert 300_000 < len(tokens.ids) < 2_000_000
    assert b'The "assert" statement' in tokens.ids.tobytes()


def test_text_file_is_byte_level(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("héllo")
    tokens = load_tokens(str(path))
    assert tokens.ids.tolist() == list("héllo".encode())


def test_parquet_shards_round_trip(tmp_path: Path) -> None:
    ids = np.random.default_rng(0).integers(0, 1000, size=10_001)
    paths = write_token_shards(ids, str(tmp_path / "shards"), vocab_size=1024, shard_tokens=3000)
    assert len(paths) == 4
    fs = pafs.LocalFileSystem()
    tokens = load_tokens(str(tmp_path / "shards") + "/", fs, str(tmp_path / "shards"))
    assert tokens.vocab_size == 1024
    assert np.array_equal(tokens.ids, ids)
    assert declared_vocab(fs, str(tmp_path / "shards")) == 1024
