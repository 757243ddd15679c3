"""Turn a text file (or Python's builtin docs) into byte-level Parquet token shards.

    python scripts/make_token_shards.py corpus.txt ./data/corpus-shards/
    python scripts/make_token_shards.py builtin:pydoc s3://my-bucket/datasets/pydoc/ --shard-tokens 100000

The shards (`shard-00000.parquet`, ...) have one int32 `tokens` column and declare their
vocabulary (256) in the schema metadata; point `workload.args.source` of a GPT job config at the folder.
S3 endpoints and credentials are read as for training (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse

from spotray.config import S3Section
from spotray.runtime.storage import resolve
from train.data import BUILTIN_PYDOC, BYTE_VOCAB, load_tokens, write_token_shards


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help=f"a text file, or {BUILTIN_PYDOC}")
    parser.add_argument("dest", help="output folder, local or s3://bucket/prefix/")
    parser.add_argument("--shard-tokens", type=int, default=1_000_000, help="tokens per shard (default 1M)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: from the environment)")
    args = parser.parse_args()

    tokens = load_tokens(args.source)
    dest = resolve(args.dest, S3Section(endpoint_url=args.endpoint_url))
    paths = write_token_shards(tokens.ids, dest.path, BYTE_VOCAB, args.shard_tokens, dest.fs)
    print(f"wrote {len(tokens.ids):,} tokens in {len(paths)} shard(s) to {dest.uri}")


if __name__ == "__main__":
    main()
