"""Token sources: byte-level text (`builtin:pydoc`, a text file) or Parquet token shards.

Free of torch, so validating a config that names a source stays fast.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

BYTE_VOCAB = 256
BUILTIN_PYDOC = "builtin:pydoc"
# Parquet shards carry their vocabulary size in the schema metadata under this key.
VOCAB_METADATA_KEY = b"vocab_size"


def pydoc_text() -> str:
    """The English documentation that ships with every CPython (about 465 KB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def is_parquet_source(source: str) -> bool:
    return source.endswith(".parquet") or source.endswith("/") or "://" in source


@dataclass(frozen=True)
class Tokens:
    """A flat token stream and the vocabulary it is drawn from."""

    ids: np.ndarray  # int32/uint8, 1-D
    vocab_size: int


def load_tokens(source: str, filesystem: pafs.FileSystem | None = None, path: str = "") -> Tokens:
    """Load the whole token stream of `source` into memory.

    `filesystem`/`path` locate Parquet shards (a file, or a folder of `*.parquet` read in
    name order); the caller resolves `s3://` URIs so this module knows nothing of AWS.
    """
    if source == BUILTIN_PYDOC:
        return Tokens(np.frombuffer(pydoc_text().encode("utf-8"), dtype=np.uint8), BYTE_VOCAB)
    if filesystem is None:
        with open(source, "rb") as f:
            return Tokens(np.frombuffer(f.read(), dtype=np.uint8), BYTE_VOCAB)
    return _load_parquet(filesystem, path)


def parquet_files(filesystem: pafs.FileSystem, path: str) -> list[str]:
    """The shard files at `path` (one file, or the `*.parquet` files of a folder), sorted."""
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no Parquet shards at {path}")
    selector = pafs.FileSelector(path, recursive=False)
    files = sorted(i.path for i in filesystem.get_file_info(selector) if i.path.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no *.parquet files in {path}")
    return files


def declared_vocab(filesystem: pafs.FileSystem, path: str) -> int | None:
    """The vocabulary size the shards declare in their metadata, if they do."""
    meta = pq.read_schema(parquet_files(filesystem, path)[0], filesystem=filesystem).metadata or {}
    return int(meta[VOCAB_METADATA_KEY]) if VOCAB_METADATA_KEY in meta else None


def _load_parquet(filesystem: pafs.FileSystem, path: str) -> Tokens:
    chunks: list[np.ndarray] = []
    vocab = 0
    for file in parquet_files(filesystem, path):
        table = pq.read_table(file, filesystem=filesystem, columns=["tokens"])
        meta = table.schema.metadata or {}
        if VOCAB_METADATA_KEY in meta:
            vocab = max(vocab, int(meta[VOCAB_METADATA_KEY]))
        column = table.column("tokens").combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = column.flatten()
        if not pa.types.is_integer(column.type):
            raise ValueError(f"{posixpath.basename(file)}: column 'tokens' must hold integers")
        chunks.append(column.to_numpy(zero_copy_only=False).astype(np.int32))
    ids = np.concatenate(chunks)
    return Tokens(ids, vocab or int(ids.max()) + 1)


def write_token_shards(
    ids: np.ndarray,
    out_dir: str,
    vocab_size: int,
    shard_tokens: int,
    filesystem: pafs.FileSystem | None = None,
) -> list[str]:
    """Write `ids` as Parquet shards `shard-00000.parquet`... with one `tokens` column."""
    filesystem = filesystem or pafs.LocalFileSystem()
    filesystem.create_dir(out_dir, recursive=True)
    schema = pa.schema([("tokens", pa.int32())], metadata={VOCAB_METADATA_KEY: str(vocab_size)})
    paths = []
    for i, start in enumerate(range(0, len(ids), shard_tokens)):
        table = pa.table({"tokens": ids[start : start + shard_tokens].astype(np.int32)}, schema=schema)
        path = posixpath.join(out_dir, f"shard-{i:05d}.parquet")
        pq.write_table(table, path, filesystem=filesystem)
        paths.append(path)
    return paths
