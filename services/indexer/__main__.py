"""`python -m services.indexer`: index a collection (settings from INDEXER_* env, overridden by flags)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .job import USER_ERRORS, run_index
from .settings import IndexerSettings


def parse_args(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m services.indexer",
        description="Embed a collection with the encoder service and write it to the vector store.",
    )
    parser.add_argument("--encoder", help="encoder gRPC target, host:port")
    parser.add_argument(
        "--model", help="the encoder model to embed with: name or fingerprint (default: its only one)"
    )
    parser.add_argument(
        "--qdrant-url", help="Qdrant server URL (default: the embedded store in --store-path)"
    )
    parser.add_argument("--store-path", type=Path, help="embedded vector store directory")
    parser.add_argument("--collection", help="collection alias that readers search")
    parser.add_argument("--media-dir", type=Path, help="where images and thumbnails are kept for display")
    parser.add_argument("--source", choices=["mnist", "folder", "csv"])
    parser.add_argument("--mnist-dir", type=Path, help="directory with the MNIST idx files")
    parser.add_argument("--mnist-split", choices=["train", "test", "both"])
    parser.add_argument("--mnist-download", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--folder", type=Path, help="image folder (one subfolder per class)")
    parser.add_argument("--csv", type=Path, help="caption CSV: image_path,caption[,label]")
    parser.add_argument("--limit", type=int, help="index only the first N items")
    parser.add_argument("--mode", choices=["full", "incremental"])
    parser.add_argument("--keep-versions", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--concurrency", type=int, help="batches in flight to the encoder")
    parser.add_argument("--deadline-s", type=float, help="longest wait for one batch's result")
    parser.add_argument("--retries", type=int)
    parser.add_argument("--fail-on-bad-items", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--shard-count", type=int, help="workers sharing one full index (default 1)")
    parser.add_argument("--shard-index", type=int, help="this worker's shard, 0 .. shard-count - 1")
    args = vars(parser.parse_args(argv))
    return {key: value for key, value in args.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = parse_args(argv)
    try:
        settings = IndexerSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"indexer: bad settings: {problems}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_index(settings))
    except USER_ERRORS as exc:
        print(f"indexer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("indexer: interrupted; run again to resume", file=sys.stderr)
        return 130
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
