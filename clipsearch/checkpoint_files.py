"""The files of a checkpoint directory, without loading the model (no torch): which hold the
weights, the fingerprint that identifies those weights, and writing a directory atomically.

The services, the demo and training all name a model by this fingerprint, so it is defined once
here; `clipsearch.checkpoint` (the loader) uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in a stable order."""
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    return [directory / WEIGHTS]


def is_checkpoint(directory: Path) -> bool:
    """A model configuration and every weight file are there (a quick look, not a load)."""
    try:
        return (directory / CONFIG).is_file() and all(path.is_file() for path in weight_files(directory))
    except (OSError, ValueError, KeyError):  # an index being written
        return False


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(directory: Path) -> str:
    """sha256 over the weight files' bytes; computed once per file state and cached."""
    digest = hashlib.sha256()
    for path in weight_files(directory):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FINGERPRINTS:
            file_digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 22):
                    file_digest.update(chunk)
            _FINGERPRINTS[key] = file_digest.hexdigest()
        digest.update(_FINGERPRINTS[key].encode())
    return digest.hexdigest()


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling directory, then swap it in: readers never see a half-written one
    (the encoder's models directory skips hidden directories, as the staging one is)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        os.chmod(staging, 0o755)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_checkpoint(source: Path, target: Path) -> None:
    """Put a copy of checkpoint `source` at `target`, atomically (a model being served there is
    replaced in one step)."""

    def fill(staging: Path) -> None:
        shutil.copytree(source, staging, dirs_exist_ok=True)

    write_dir_atomically(target, fill)
