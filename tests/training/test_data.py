"""Data sources, captions, bad-data reporting and augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clipsearch.datasets import DatasetError
from training.config import AugmentConfig, DataConfig
from training.data import (
    PLURAL_TEMPLATES,
    SINGULAR_TEMPLATES,
    all_captions,
    augment,
    background_fill,
    caption_pairs,
    folder_pairs,
    load_pairs,
    sample_captions,
    split,
)
from training.models import COMPACT_CONFIGS, image_processor_for

PROCESSOR: Any = image_processor_for(COMPACT_CONFIGS["tiny"])


def test_caption_csv_reads_every_row_with_its_caption(caption_csv: Path) -> None:
    data = caption_pairs(caption_csv, PROCESSOR)
    assert data.pixels.shape == (36, 3, 28, 28)
    assert data.captions is not None
    assert data.captions[:2] == ["a red circle", "a green circle"]
    assert data.labels is None
    assert data.skipped == []


def test_class_folders_give_labels_and_class_names(class_folder: Path) -> None:
    data = folder_pairs(class_folder, PROCESSOR)
    assert data.class_names == ["circle", "square"]
    assert data.labels is not None
    assert data.labels.bincount().tolist() == [12, 12]


def test_mnist_idx_files_load_with_digit_classes(mnist_idx_dir: Path) -> None:
    data = load_pairs(DataConfig(mnist_dir=mnist_idx_dir), PROCESSOR, "test")
    assert len(data) == 100
    assert data.numerals
    assert data.class_names[8] == "eight"


def test_bad_rows_and_images_are_skipped_and_named(
    caption_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (caption_csv.parent / "img0.png").write_bytes(b"not an image at all")
    with caption_csv.open("a") as handle:
        handle.write("missing.png|a ghost\n")
        handle.write("only-one-field\n")
    data = caption_pairs(caption_csv, PROCESSOR)
    assert len(data) == 35  # 36 good rows, one of them now corrupt; the two bad rows added are skipped too
    joined = "\n".join(data.skipped)
    assert len(data.skipped) == 3
    assert "img0.png" in joined
    assert ":2:" in joined
    assert "missing.png" in joined
    assert ":38:" in joined
    assert ":39:" in joined
    assert "only-one-field" in joined
    assert "skipping" in caplog.text


def test_strict_mode_fails_on_the_first_bad_row(caption_csv: Path) -> None:
    with caption_csv.open("a") as handle:
        handle.write("missing.png|a ghost\n")
    with pytest.raises(DatasetError, match=r"missing\.png"):
        caption_pairs(caption_csv, PROCESSOR, strict=True)


def test_corrupt_image_in_class_folder_is_skipped_by_path(class_folder: Path) -> None:
    corrupt = class_folder / "square" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = folder_pairs(class_folder, PROCESSOR)
    assert len(data) == 24
    assert len(data.skipped) == 1
    assert str(corrupt) in data.skipped[0]


def test_captions_come_from_templates_with_words_and_numerals(mnist_idx_dir: Path) -> None:
    data = load_pairs(DataConfig(mnist_dir=mnist_idx_dir), PROCESSOR, "train")
    eight = all_captions(data.class_names, data.numerals, 8)
    assert {"a handwritten digit eight", "the number 8", "8", "eights", "8s", "an eight"} <= set(eight)
    assert len(eight) == 2 * (len(SINGULAR_TEMPLATES) + len(PLURAL_TEMPLATES))
    indices = torch.arange(20)
    first = sample_captions(data, indices, torch.Generator().manual_seed(0))
    again = sample_captions(data, indices, torch.Generator().manual_seed(0))
    assert first == again
    labels = data.labels
    assert labels is not None
    assert all(
        caption in all_captions(data.class_names, data.numerals, int(labels[i]))
        for i, caption in zip(indices, first, strict=True)
    )


def test_split_is_seeded_and_disjoint(class_folder: Path) -> None:
    data = folder_pairs(class_folder, PROCESSOR)
    train_a, val_a = split(data, 0.25, seed=3)
    train_b, val_b = split(data, 0.25, seed=3)
    assert val_a is not None
    assert val_b is not None
    assert len(val_a) == 6
    assert len(train_a) == 18
    assert torch.equal(val_a.pixels, val_b.pixels)
    assert torch.equal(train_a.pixels, train_b.pixels)


def test_augmentation_moves_digits_and_fills_with_background(mnist_idx_dir: Path) -> None:
    data = load_pairs(DataConfig(mnist_dir=mnist_idx_dir, limit=8), PROCESSOR, "train")
    fill = background_fill(PROCESSOR)
    moved = augment(data.pixels, AugmentConfig(max_shift=0.2), torch.Generator().manual_seed(0), fill)
    assert moved.shape == data.pixels.shape
    assert not torch.allclose(moved, data.pixels)
    # Pixels shifted in from outside are black (normalised), not the zeros of grid_sample.
    assert torch.allclose(moved.amin(dim=(0, 2, 3)), fill.flatten(), atol=1e-3)
    unchanged = augment(data.pixels, AugmentConfig(enabled=False), torch.Generator(), fill)
    assert torch.equal(unchanged, data.pixels)
