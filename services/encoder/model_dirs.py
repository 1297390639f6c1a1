"""Checkpoint directories the encoder watches while it serves: what is in a models directory, and
whether a checkpoint directory changed since it was loaded.

A directory is only ever loaded whole. It is a candidate when it holds every file a checkpoint
needs (clipsearch.checkpoint.check_checkpoint_dir), its *stamp* (the directory's inode and the
size and modification time of each of its model files) has stayed the same for one poll, and the
stamp is still the same after the load; a directory replaced or written to during the load is
loaded again at the next poll. The trainer writes checkpoints atomically (a hidden staging
directory renamed into place: clipsearch.checkpoint_files.write_dir_atomically), which changes the inode in
one step; hidden directories (its staging and `.old` ones) are never models. Anything else that
copies files in place settles before it is loaded, since the stamp must hold still for a poll.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipsearch.checkpoint import CheckpointError, check_checkpoint_dir
from services.encoder.settings import FINGERPRINT, MODEL_NAME, ModelSource

log = logging.getLogger(__name__)

# The files a checkpoint consists of (those fetched from a hub): a README or an eval/ folder written
# beside them by the evaluation does not make the model change.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model")
Stamp = tuple[int, int, tuple[tuple[str, int, int], ...]]


def checkpoint_stamp(directory: Path) -> Stamp | None:
    """What identifies the directory's current contents; None when it is not a complete checkpoint
    now (missing, being replaced, a file not written yet)."""
    try:
        check_checkpoint_dir(directory)
        info = directory.stat()
        files = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(MODEL_FILE_SUFFIXES) and entry.is_file():
                    stat = entry.stat()
                    files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except (CheckpointError, OSError, ValueError):  # ValueError: a sharded index read mid-write
        return None
    return info.st_dev, info.st_ino, tuple(sorted(files))


def is_local(source: ModelSource) -> bool:
    """Whether the model is a local directory (watched), not a hub id (as resolve_checkpoint tells)."""
    path = Path(source.checkpoint).expanduser()
    return path.exists() or source.checkpoint.startswith((".", "/", "~"))


def stamp_of(source: ModelSource) -> Stamp | None:
    return checkpoint_stamp(Path(source.checkpoint).expanduser())


def models_in(directory: Path) -> list[ModelSource]:
    """The models a models directory offers: each visible subdirectory with a usable name, served
    under that name (whether it holds a complete checkpoint is checked when it is loaded)."""
    try:
        entries = sorted(path for path in directory.iterdir() if path.is_dir())
    except OSError as exc:
        log.warning("cannot list the models directory %s: %s", directory, exc)
        return []
    found = []
    for path in entries:
        name = path.name
        if name.startswith("."):  # a writer's staging or old copy
            continue
        if not MODEL_NAME.fullmatch(name) or FINGERPRINT.fullmatch(name):
            log.debug("%s: not a usable model name, skipped", path)
            continue
        found.append(ModelSource(name, str(path)))
    return found
