"""Small collections the indexer tests write themselves: MNIST idx files, a class folder, a caption CSV."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.indexer.settings import IndexerSettings


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, type 0x08 (unsigned byte), ndim, then big-endian dims and the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(directory: Path, *, test: int = 40, train: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("t10k", test), ("train", train)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        for i in range(count):  # a random bright blob per image, so every image differs
            y, x = rng.integers(4, 20, size=2)
            images[i, y : y + 6, x : x + 4] = rng.integers(128, 256, size=(6, 4))
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


def write_png(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def mnist_files(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for i in range(6):
        write_png(root / ("cats" if i % 2 else "dogs") / f"{i}.png", seed=i)
    return root


@pytest.fixture
def make_settings(tmp_path: Path, encoder_target: str) -> Callable[..., IndexerSettings]:
    def make(**overrides: object) -> IndexerSettings:
        values: dict[str, object] = {
            "encoder": encoder_target,
            "store_path": tmp_path / "qdrant",
            "media_dir": tmp_path / "media",
            "collection": "digits",
            "source": "mnist",
            "mnist_dir": tmp_path / "mnist",
            "batch_size": 8,
            "concurrency": 2,
            "deadline_s": 30.0,
            "progress": False,
        }
        values.update(overrides)
        return IndexerSettings(**values)  # type: ignore[arg-type]

    return make
