"""Small datasets made by the tests: coloured shapes with captions, class folders, MNIST idx files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training.config import DataConfig, TrainConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}
SHAPES = ("circle", "square")


def shape_image(colour: str, shape: str, jitter: int) -> Image.Image:
    image = Image.new("RGB", (28, 28), "white")
    draw = ImageDraw.Draw(image)
    box = (4 + jitter, 4 + jitter, 22 + jitter, 22 + jitter)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


@pytest.fixture
def caption_csv(tmp_path: Path) -> Path:
    """36 coloured shapes with captions, `|`-separated with a header."""
    folder = tmp_path / "shapes"
    folder.mkdir()
    lines = ["image_path|caption"]
    for index in range(36):
        colour = list(COLOURS)[index % 3]
        shape = SHAPES[(index // 3) % 2]
        name = f"img{index}.png"
        shape_image(colour, shape, index % 4).save(folder / name)
        lines.append(f"{name}|a {colour} {shape}")
    path = folder / "captions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folders"
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for index in range(12):
            shape_image(list(COLOURS)[index % 3], shape, index % 4).save(root / shape / f"{index}.png")
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White-on-black 28x28 images whose label is the row of a bright bar (learnable in seconds)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 30, size=(count, 28, 28))
    for image, label in zip(images, labels, strict=True):
        image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
    return images, labels


@pytest.fixture
def mnist_idx_dir(tmp_path: Path) -> Path:
    """The four MNIST idx files (gzip), written by the test: 200 train and 100 test images."""
    directory = tmp_path / "mnist"
    directory.mkdir()
    for prefix, count, seed in (("train", 200, 0), ("t10k", 100, 1)):
        images, labels = fake_digits(count, seed)
        _idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def tiny_config(tmp_path: Path, data: DataConfig, **overrides: object) -> TrainConfig:
    """Seconds-long training of the tiny compact CLIP."""
    settings: dict[str, object] = {
        "model": "tiny",
        "output": tmp_path / "out",
        "data": data,
        "epochs": 2,
        "batch_size": 16,
        "warmup_steps": 2,
        "lr": 3e-3,
        "progress": False,
        "num_threads": 1,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)
