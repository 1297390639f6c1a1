"""Training data behind one interface: preprocessed pixels, optional labels, and captions.

Every source (MNIST idx files, a caption CSV, class folders) is read with the
shared readers in `clipsearch.datasets` and turned into model input once, with
`clipsearch.preprocess.pixel_values` (the same path the encoder serves with);
augmentation then works on those tensors. Labelled data gets its captions from
prompt templates, sampled per step.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsearch.datasets import DatasetError, list_image_folder, load_mnist, read_caption_csv
from clipsearch.preprocess import ImageInputError, decode_image, pixel_values
from training.config import AugmentConfig, DataConfig
from training.models import DIGIT_WORDS

log = logging.getLogger(__name__)

# Phrasings used to caption labelled training images. "{}" is a singular label
# ("eight" or "8"), "{p}" a plural one ("eights" or "8s"). The free-form
# evaluation queries (training/evaluate.py) deliberately use other wordings.
SINGULAR_TEMPLATES = [
    "{}",
    "a {}",
    "the number {}",
    "number {}",
    "the digit {}",
    "a handwritten digit {}",
    "a handwritten {}",
    "handwritten {}",
    "a photo of the number {}",
    "a photo of a {}",
    "a picture of a {}",
    "an image of the digit {}",
    "a drawing of a {}",
    "a sketch of the numeral {}",
    "a hand written figure {}",
    "this is a {}",
]
PLURAL_TEMPLATES = [
    "{p}",
    "some {p}",
    "handwritten {p}",
    "photos of {p}",
    "all the {p}",
    "drawings of {p}",
]
PROCESS_CHUNK = 4096


@dataclass
class PairData:
    """Preprocessed images with a label (class index) and/or a fixed caption each."""

    pixels: torch.Tensor  # (n, 3, H, W) float32, as pixel_values makes it
    labels: torch.Tensor | None  # (n,) int64, or None for caption-only data
    captions: list[str] | None  # one fixed caption per image, or None for labelled data
    class_names: list[str] = field(default_factory=list)
    numerals: bool = False  # class i may also be written as the numeral "i" (digits)
    skipped: list[str] = field(default_factory=list)  # what was left out, and why
    styles: list[str] | None = None  # drawing style per image (emoji)
    class_captions: list[list[str]] | None = None  # per class: captions to sample from (else templates)
    prompt_templates: list[str] | None = None  # zero-shot prompts for the checkpoint (else the defaults)
    white_background: bool = False  # pictures on white: augmentation fills with white

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def subset(self, indices: torch.Tensor) -> PairData:
        return PairData(
            pixels=self.pixels[indices],
            labels=None if self.labels is None else self.labels[indices],
            captions=None if self.captions is None else [self.captions[int(i)] for i in indices],
            class_names=self.class_names,
            numerals=self.numerals,
            styles=None if self.styles is None else [self.styles[int(i)] for i in indices],
            class_captions=self.class_captions,
            prompt_templates=self.prompt_templates,
            white_background=self.white_background,
        )


def label_forms(class_names: Sequence[str], numerals: bool, label: int) -> tuple[list[str], list[str]]:
    """Singular and plural ways to write a class: ("eight", "8") and ("eights", "8s")."""
    name = class_names[label]
    singular, plural = [name], [pluralize(name)]
    if numerals:
        singular.append(str(label))
        plural.append(f"{label}s")
    return singular, plural


def pluralize(word: str) -> str:
    if word.endswith("x"):
        return word + "es"  # "six" -> "sixes"
    return word + "s"


def with_articles(text: str) -> str:
    """'a eight' -> 'an eight', 'a 8' -> 'an 8' (but 'a one')."""
    return re.sub(r"\b([aA]) (?=[aeiu8]|o(?!ne))", r"\1n ", text)


def all_captions(class_names: Sequence[str], numerals: bool, label: int) -> list[str]:
    """Every templated caption of a class (evaluation, caching and distillation use the full set)."""
    singular, plural = label_forms(class_names, numerals, label)
    captions = [t.format(s) for t in SINGULAR_TEMPLATES for s in singular]
    captions += [t.format(p=p) for t in PLURAL_TEMPLATES for p in plural]
    return [with_articles(caption) for caption in captions]


def sample_captions(data: PairData, indices: torch.Tensor, generator: torch.Generator) -> list[str]:
    """One caption per image: its own for caption data, a random templated one for labelled data."""
    if data.captions is not None:
        return [data.captions[int(i)] for i in indices]
    assert data.labels is not None
    options = data.class_captions or [
        all_captions(data.class_names, data.numerals, label) for label in range(len(data.class_names))
    ]
    picks = torch.randint(0, 1 << 30, (len(indices),), generator=generator)
    return [
        options[int(label)][int(pick) % len(options[int(label)])]
        for label, pick in zip(data.labels[indices], picks, strict=True)
    ]


def split(data: PairData, val_fraction: float, seed: int) -> tuple[PairData, PairData | None]:
    """A seeded train/validation split (no validation set when the fraction is 0)."""
    n_val = round(len(data) * val_fraction)
    if n_val == 0:
        return data, None
    if n_val >= len(data):
        raise DatasetError(f"validation fraction {val_fraction} leaves no training data of {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def preprocess(images: Sequence[Image.Image], processor: Any) -> torch.Tensor:
    """All images through the one preprocessing path, in chunks to bound memory."""
    chunks = [
        pixel_values(images[start : start + PROCESS_CHUNK], processor)
        for start in range(0, len(images), PROCESS_CHUNK)
    ]
    return torch.cat(chunks).float()


def mnist_pairs(
    directory: Path,
    split_name: str,
    processor: Any,
    *,
    download: bool = False,
    limit: int | None = None,
) -> PairData:
    loaded = load_mnist(directory, "train" if split_name == "train" else "test", download=download)
    images, labels = loaded.images[:limit], loaded.labels[:limit]
    pil = [Image.fromarray(np.ascontiguousarray(image), mode="L") for image in images]
    return PairData(
        pixels=preprocess(pil, processor),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        captions=None,
        class_names=list(DIGIT_WORDS),
        numerals=True,
    )


def _open(path: Path) -> Image.Image:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"cannot read file: {exc.strerror or exc}") from None
    return decode_image(data)


def _report(skipped: list[str], message: str, strict: bool) -> None:
    if strict:
        raise DatasetError(message)
    log.warning("skipping %s", message)
    skipped.append(message)


def caption_pairs(
    csv_path: Path,
    processor: Any,
    *,
    strict: bool = False,
    limit: int | None = None,
    white_background: bool = False,
) -> PairData:
    """`image_path,caption[,label]` rows; bad rows and unreadable images are skipped and named."""
    rows, errors = read_caption_csv(csv_path)
    skipped: list[str] = []
    for error in errors:
        _report(skipped, error.message, strict)
    images: list[Image.Image] = []
    captions: list[str] = []
    row_labels: list[str | None] = []
    for row in rows[:limit]:
        try:
            images.append(_open(row.image_path))
        except ImageInputError as exc:
            _report(skipped, f"{csv_path}:{row.row}: image {row.relative_path}: {exc}", strict)
            continue
        captions.append(row.caption)
        row_labels.append(row.label)
    if not images:
        raise DatasetError(f"{csv_path} has no usable rows ({len(skipped)} skipped)")
    labels: torch.Tensor | None = None
    class_names: list[str] = []
    class_captions: list[list[str]] | None = None
    if all(label is not None for label in row_labels):
        class_names = sorted({str(label) for label in row_labels})
        position = {name: index for index, name in enumerate(class_names)}
        labels = torch.tensor([position[str(label)] for label in row_labels])
        # Each class's captions, for the concept bank (training.losses.concept_bank_loss).
        grouped: dict[str, dict[str, None]] = {name: {} for name in class_names}
        for caption, label in zip(captions, row_labels, strict=True):
            grouped[str(label)][caption] = None
        class_captions = [list(grouped[name]) for name in class_names]
    return PairData(
        preprocess(images, processor),
        labels,
        captions,
        class_names,
        skipped=skipped,
        class_captions=class_captions,
        white_background=white_background,
    )


def folder_pairs(root: Path, processor: Any, *, strict: bool = False, limit: int | None = None) -> PairData:
    """One subfolder per class; unreadable images are skipped and named."""
    items = [item for item in list_image_folder(root) if item.class_name is not None]
    if not items:
        raise DatasetError(f"{root} has no images in class subfolders")
    class_names = sorted({str(item.class_name) for item in items})
    skipped: list[str] = []
    images: list[Image.Image] = []
    labels: list[int] = []
    for item in items[:limit]:
        try:
            images.append(_open(item.image_path))
        except ImageInputError as exc:
            _report(skipped, f"{item.image_path}: {exc}", strict)
            continue
        labels.append(class_names.index(str(item.class_name)))
    if not images:
        raise DatasetError(f"{root} has no readable images ({len(skipped)} skipped)")
    return PairData(preprocess(images, processor), torch.tensor(labels), None, class_names, skipped=skipped)


def load_pairs(config: DataConfig, processor: Any, split_name: str = "train") -> PairData:
    """The configured source as PairData (MNIST picks its train or test split)."""
    if config.kind == "emoji":
        from training.emoji import emoji_pairs

        pairs: PairData = emoji_pairs(config, processor)
        return pairs
    if config.kind == "mnist":
        return mnist_pairs(
            config.resolved_mnist_dir(), split_name, processor, download=config.download, limit=config.limit
        )
    if config.kind == "captions":
        assert config.captions_csv is not None
        return caption_pairs(
            config.captions_csv,
            processor,
            strict=config.strict,
            limit=config.limit,
            white_background=config.white_background,
        )
    assert config.image_folder is not None
    return folder_pairs(config.image_folder, processor, strict=config.strict, limit=config.limit)


def normalisation(processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's per-channel mean and std, shaped (1, 3, 1, 1)."""
    mean = torch.tensor(getattr(processor, "image_mean", [0.0, 0.0, 0.0]), dtype=torch.float32)
    std = torch.tensor(getattr(processor, "image_std", [1.0, 1.0, 1.0]), dtype=torch.float32)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def background_fill(processor: Any, white: bool = False) -> torch.Tensor:
    """What a black (or white) pixel becomes after normalisation: the fill for pixels shifted in."""
    mean, std = normalisation(processor)
    return ((1.0 if white else 0.0) - mean) / std


def augment(
    pixels: torch.Tensor, config: AugmentConfig, generator: torch.Generator, fill: torch.Tensor
) -> torch.Tensor:
    """Random affine (shift, rotation, scale, shear) of a whole batch with one grid_sample.

    The random draws come from `generator` on the CPU (same numbers on any device); the resampling
    runs where `pixels` are, so a GPU run does not spend its time warping images on the CPU.
    """
    if not config.enabled:
        return pixels
    n = pixels.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = torch.deg2rad(uniform(-config.max_rotation_deg, config.max_rotation_deg))
    scale = uniform(*config.scale_range)
    shear = uniform(-config.max_shear, config.max_shear)
    shift_x = uniform(-config.max_shift, config.max_shift) * 2  # grid units span 2 per image side
    shift_y = uniform(-config.max_shift, config.max_shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, shift_x], dim=1),
            torch.stack([sin, cos + shear * sin, shift_y], dim=1),
        ],
        dim=1,
    ).to(device=pixels.device, dtype=pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    fill = fill.to(device=pixels.device, dtype=pixels.dtype)
    # Sample the image relative to its background so new border pixels are background, not zeros.
    moved = F.grid_sample(pixels - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + fill
