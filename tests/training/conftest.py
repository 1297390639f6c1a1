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


# --- a generated emoji-layout directory: emoji.csv and images/<style>/<id>.png -------------------

EMOJI_CONCEPTS = [
    # id, emoji, label, tags, group, subgroup, shape, colour
    ("1F534", "🔴", "red circle", "circle|geometric|red", "symbols", "geometric", "circle", (220, 40, 40)),
    ("1F7E6", "🟦", "blue square", "blue|geometric|square", "symbols", "geometric", "square", (40, 80, 220)),
    (
        "1F53A",
        "🔺",
        "red triangle",
        "geometric|red|triangle",
        "symbols",
        "geometric",
        "triangle",
        (220, 40, 40),
    ),
    (
        "1F7E2",
        "🟢",
        "green circle",
        "circle|geometric|green",
        "symbols",
        "geometric",
        "circle",
        (40, 170, 60),
    ),
    ("2B50", "⭐", "star", "medium|star", "travel & places", "sky & weather", "cross", (240, 200, 30)),
    (
        "1F7E7",
        "🟧",
        "orange square",
        "geometric|orange|square",
        "symbols",
        "geometric",
        "square",
        (240, 140, 30),
    ),
]
EMOJI_HEADER = "id,emoji,label,tags,group,subgroup,label_de,label_es,label_fr,label_it,label_ja,label_pt,label_ru,label_zh"


def emoji_picture(shape: str, colour: tuple[int, int, int], style: str, size: int = 64) -> Image.Image:
    """A concept drawn in one of the four styles, on a transparent background like the real files."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    box = (10, 10, size - 10, size - 10)
    line = style == "openmoji-line"
    fill = None if line else (*(c // 2 if style == "twitter" else c for c in colour), 255)
    outline = (0, 0, 0, 255) if style.startswith("openmoji") else None
    width = 3 if style.startswith("openmoji") else 1
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        draw.polygon([(size // 2, 10), (size - 10, size - 10), (10, size - 10)], fill=fill, outline=outline)
    else:
        colour_or_ink = (0, 0, 0, 255) if line else fill
        draw.line((10, size // 2, size - 10, size // 2), fill=colour_or_ink, width=8 if not line else 3)
        draw.line((size // 2, 10, size // 2, size - 10), fill=colour_or_ink, width=8 if not line else 3)
    return image


def write_emoji_dir(root: Path, *, bad_row: bool = True) -> Path:
    """A few concepts in the four styles, and an emoji.csv with one malformed row (line 4)."""
    lines = [EMOJI_HEADER]
    for number, (hexcode, char, label, tags, group, subgroup, shape, colour) in enumerate(EMOJI_CONCEPTS):
        lines.append(",".join([hexcode, char, label, tags, group, subgroup, *[label] * 8]))
        if bad_row and number == 1:
            lines.append("1F7E5,🟥,red square")  # line 4: three fields where fourteen are expected
        for style in ("google", "twitter", "openmoji", "openmoji-line"):
            folder = root / "images" / style
            folder.mkdir(parents=True, exist_ok=True)
            emoji_picture(shape, colour, style).save(folder / f"{hexcode}.png")
    (root / "emoji.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return root


@pytest.fixture
def emoji_dir(tmp_path: Path) -> Path:
    return write_emoji_dir(tmp_path / "emoji")
