"""Readers for the collection formats clipsearch knows, shared by training and the indexer.

- MNIST: the four standard idx files (gzip or not) from a local directory, or
  downloaded from the official mirrors with checksum verification.
- Caption CSV: `image_path,caption[,label]` (comma or `|` separated, header
  optional), paths relative to the CSV.
- Class folders: one subfolder per class (Oxford-IIIT Pets style).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

MNIST_FILES: dict[str, tuple[str, str]] = {
    # name -> (file, md5 of the official .gz as the mirrors publish it)
    "train-images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test-images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test-labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class DatasetError(RuntimeError):
    """A collection cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # (n, 28, 28) uint8, white digit on black
    labels: np.ndarray  # (n,) int64


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DatasetError(f"{path} holds {len(data) - offset} bytes of data; its header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _locate(directory: Path, filename: str) -> Path | None:
    for candidate in (directory / filename, directory / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def download_mnist(directory: Path) -> None:
    """Fetch missing MNIST files from the official mirrors, verifying each download's published checksum."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in MNIST_FILES.values():
        if _locate(directory, filename):
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + filename, timeout=60) as response:
                    payload = response.read()
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
                continue
            digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
            if digest != md5:
                errors.append(f"{mirror}: checksum {digest} does not match {md5}")
                continue
            partial = directory / (filename + ".part")
            partial.write_bytes(payload)
            partial.replace(directory / filename)
            log.info("downloaded %s from %s", filename, mirror)
            break
        else:
            raise DatasetError(f"could not download {filename}: " + "; ".join(errors))


def load_mnist(directory: Path, split: Split, *, download: bool = False) -> MnistSplit:
    """One MNIST split from `directory` (set MNIST_DIR); downloads first when allowed."""
    directory = Path(directory)
    prefix = "train" if split == "train" else "test"
    image_name, _ = MNIST_FILES[f"{prefix}-images"]
    label_name, _ = MNIST_FILES[f"{prefix}-labels"]
    if download and not (_locate(directory, image_name) and _locate(directory, label_name)):
        download_mnist(directory)
    image_path, label_path = _locate(directory, image_name), _locate(directory, label_name)
    if image_path is None or label_path is None:
        missing = image_name if image_path is None else label_name
        raise DatasetError(
            f"MNIST file {missing} not found in {directory}: point MNIST_DIR at the idx files, "
            "or allow the download"
        )
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{image_path} and {label_path} do not match ({images.shape} vs {labels.shape})")
    return MnistSplit(images=images, labels=labels.astype(np.int64))


@dataclass(frozen=True)
class CaptionRow:
    row: int  # 1-based line number in the CSV, for error messages
    image_path: Path
    relative_path: str
    caption: str
    label: str | None


@dataclass(frozen=True)
class RowError:
    row: int
    message: str


def read_caption_csv(path: Path) -> tuple[list[CaptionRow], list[RowError]]:
    """Rows of `image_path,caption[,label]`; malformed rows are returned as errors, not raised."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "|" if first.count("|") > first.count(",") else ","
    rows: list[CaptionRow] = []
    errors: list[RowError] = []
    for number, fields in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if number == 1 and fields[0].lower() in {"image_path", "image", "image_name", "path", "filename"}:
            continue
        if len(fields) < 2 or len(fields) > 3 or not fields[0] or not fields[1]:
            errors.append(
                RowError(number, f"{path}:{number}: expected image_path,caption[,label], got {fields!r}")
            )
            continue
        relative = fields[0]
        rows.append(
            CaptionRow(
                row=number,
                image_path=(path.parent / relative),
                relative_path=relative,
                caption=fields[1],
                label=fields[2] if len(fields) == 3 and fields[2] else None,
            )
        )
    return rows, errors


@dataclass(frozen=True)
class FolderItem:
    image_path: Path
    relative_path: str
    class_name: str | None  # the first-level subfolder, when the folder is organised by class


def list_image_folder(root: Path, *, classes_from_subfolders: bool = True) -> list[FolderItem]:
    """Image files under `root` (recursive, sorted); the class is the first-level subfolder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(root)
        class_name = relative.parts[0] if classes_from_subfolders and len(relative.parts) > 1 else None
        items.append(FolderItem(image_path=path, relative_path=relative.as_posix(), class_name=class_name))
    return items
