"""Checkpoint loading through the real loader (clipsearch.checkpoint, clipsearch.embedder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.checkpoint import CheckpointError, load_checkpoint, weights_fingerprint
from clipsearch.embedder import Embedder, TextInputError
from clipsearch.preprocess import SketchNormalization


def test_loads_tiny_checkpoint(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.architecture == "clip"
    assert checkpoint.embedding_dim == 16
    assert checkpoint.image_size == 28
    assert checkpoint.device.type == "cpu"
    assert checkpoint.meta.sketch_normalization is SketchNormalization.MNIST
    assert len(checkpoint.fingerprint) == 64
    assert type(checkpoint.image_processor).__name__.endswith("Pil")


def test_embeddings_are_unit_and_deterministic(tiny_checkpoint: Path) -> None:
    embedder = Embedder.from_checkpoint(load_checkpoint(tiny_checkpoint))
    texts = embedder.embed_texts(["the number 7", "a scribbled five"])
    images = embedder.embed_images([Image.new("RGB", (28, 28)), Image.new("RGB", (64, 40), "white")])
    for vectors in (texts, images):
        assert vectors.shape == (2, 16)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(texts, embedder.embed_texts(["the number 7", "a scribbled five"]))


def test_text_checks(tiny_checkpoint: Path) -> None:
    embedder = Embedder.from_checkpoint(load_checkpoint(tiny_checkpoint))
    with pytest.raises(TextInputError, match="empty"):
        embedder.check_texts(["ok", "   "])
    with pytest.raises(TextInputError, match="at most"):
        embedder.check_texts(["seven " * 100])


def test_fingerprint_differs_between_weights(tiny_checkpoint: Path, other_tiny_checkpoint: Path) -> None:
    assert weights_fingerprint(tiny_checkpoint) != weights_fingerprint(other_tiny_checkpoint)
    assert weights_fingerprint(tiny_checkpoint) == load_checkpoint(tiny_checkpoint).fingerprint


@pytest.mark.parametrize(
    "missing", ["model.safetensors", "config.json", "preprocessor_config.json", "tokenizer.json"]
)
def test_missing_file_is_named(tiny_checkpoint: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        load_checkpoint(broken)


def test_corrupt_weights_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(broken)


def test_pickled_weights_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_checkpoint(pickled)


def test_hub_id_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a local directory"):
        load_checkpoint("openai/clip-vit-base-patch32")
