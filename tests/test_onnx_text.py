"""The text tower on ONNX Runtime: close to torch, cached, checked, and torch where it is not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipsearch import onnx_text
from clipsearch.checkpoint import LoadedCheckpoint, load_checkpoint
from clipsearch.embedder import Embedder, text_features
from clipsearch.encoder_client import EncoderClient
from clipsearch.onnx_text import TextRuntime, TextRuntimeError, cached_path
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from training.models import build_compact

TEXTS = ["zero", "a handwritten digit seven", "the number 3", "show me sevens, written quickly please"]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> LoadedCheckpoint:
    """CLIP's own text transformer, with a word tokenizer."""
    return load_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> LoadedCheckpoint:
    """The demo's architecture: the pretrained MiniLM text tower in a dual encoder."""
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-convnext"
    build_compact("tiny-convnext", seed=0).save(directory)
    return load_checkpoint(directory, device="cpu")


@pytest.mark.parametrize("model", ["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
@pytest.mark.parametrize("runtime", [TextRuntime.ONNX, TextRuntime.ONNX_INT8])
def test_onnx_runtimes_embed_unit_vectors_close_to_torch(
    model: str, runtime: TextRuntime, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    checkpoint: LoadedCheckpoint = request.getfixturevalue(model)
    reference = Embedder.from_checkpoint(checkpoint).embed_texts(TEXTS)
    embedder = Embedder.from_checkpoint(checkpoint, text_runtime=runtime, onnx_cache_dir=tmp_path)
    assert embedder.text_runtime is runtime
    got = embedder.embed_texts(TEXTS)
    assert got.dtype == np.float32
    assert got.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    smallest = float((got * reference).sum(axis=1).min())
    assert smallest >= (0.99999 if runtime is TextRuntime.ONNX else onnx_text.MIN_PROBE_COSINE), smallest


@pytest.mark.slow
def test_a_text_gets_the_same_int8_vector_whatever_its_batch(
    minilm: LoadedCheckpoint, tmp_path: Path
) -> None:
    # Per-tensor activation scales would otherwise let a long companion shift a short text's vector.
    embedder = Embedder.from_checkpoint(minilm, text_runtime=TextRuntime.ONNX_INT8, onnx_cache_dir=tmp_path)
    alone = embedder.embed_texts(["seven"])[0]
    crowded = embedder.embed_texts(["a very long and winding description of a digit " * 3, "seven"])[1]
    np.testing.assert_array_equal(alone, crowded)


def test_the_export_is_cached_per_checkpoint_and_reused(
    tiny: LoadedCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Embedder.from_checkpoint(tiny, text_runtime=TextRuntime.ONNX_INT8, onnx_cache_dir=tmp_path)
    path = cached_path(tmp_path, tiny.fingerprint, TextRuntime.ONNX_INT8)
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]  # no temporary files left

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although a cached tower exists")

    monkeypatch.setattr(onnx_text, "export_text_tower", no_export)
    embedder = Embedder.from_checkpoint(tiny, text_runtime=TextRuntime.ONNX_INT8, onnx_cache_dir=tmp_path)
    assert embedder.text_runtime is TextRuntime.ONNX_INT8


def test_a_damaged_cache_file_is_exported_again(tiny: LoadedCheckpoint, tmp_path: Path) -> None:
    path = cached_path(tmp_path, tiny.fingerprint, TextRuntime.ONNX)
    path.write_bytes(b"not an onnx graph")
    embedder = Embedder.from_checkpoint(tiny, text_runtime=TextRuntime.ONNX, onnx_cache_dir=tmp_path)
    assert embedder.text_runtime is TextRuntime.ONNX
    assert path.stat().st_size > 1000
    reference = Embedder.from_checkpoint(tiny).embed_texts(TEXTS)
    assert float((embedder.embed_texts(TEXTS) * reference).sum(axis=1).min()) > 0.99999


def test_an_unwritable_cache_directory_exports_to_a_temporary_one(
    tiny: LoadedCheckpoint, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    embedder = Embedder.from_checkpoint(tiny, text_runtime=TextRuntime.ONNX, onnx_cache_dir=not_a_directory)
    assert embedder.text_runtime is TextRuntime.ONNX
    assert embedder.embed_texts(TEXTS).shape[0] == len(TEXTS)


def test_auto_keeps_torch_where_the_probe_cosine_is_too_low(
    tiny: LoadedCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_text, "MIN_PROBE_COSINE", 1.01)  # no tower can reach it
    assert Embedder.from_checkpoint(tiny, text_runtime="auto", onnx_cache_dir=tmp_path).text_runtime is (
        TextRuntime.TORCH
    )
    # Asked for by name, the runtime is used (its probe cosine is logged).
    explicit = Embedder.from_checkpoint(tiny, text_runtime="onnx-int8", onnx_cache_dir=tmp_path)
    assert explicit.text_runtime is TextRuntime.ONNX_INT8


def test_a_failed_export_falls_back_under_auto_and_fails_loudly_when_asked_for(
    tiny: LoadedCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise TextRuntimeError("exporting the text tower to ONNX failed: unsupported operator")

    monkeypatch.setattr(onnx_text, "export_text_tower", broken_export)
    auto = Embedder.from_checkpoint(tiny, text_runtime="auto", onnx_cache_dir=tmp_path)
    assert auto.text_runtime is TextRuntime.TORCH
    assert auto.embed_texts(TEXTS).shape[0] == len(TEXTS)
    with pytest.raises(TextRuntimeError, match="unsupported operator"):
        Embedder.from_checkpoint(tiny, text_runtime="onnx", onnx_cache_dir=tmp_path)


def test_torch_is_used_off_the_cpu_and_when_asked_for(tiny: LoadedCheckpoint) -> None:
    assert Embedder.from_checkpoint(tiny).text_runtime is TextRuntime.TORCH
    runtime, forward = onnx_text.choose_text_forward(
        "onnx-int8",
        device=torch.device("meta"),
        model=tiny.model,
        features=lambda model, batch: batch["input_ids"],
        tokenize=lambda texts: {},
        fingerprint=tiny.fingerprint,
    )
    assert runtime is TextRuntime.TORCH
    assert forward is None


def test_the_export_refuses_an_unpadded_example(tiny: LoadedCheckpoint, tmp_path: Path) -> None:
    # Traced on a batch without padding, the graph could leave the attention mask out.
    embedder = Embedder.from_checkpoint(tiny)
    with pytest.raises(TextRuntimeError, match="padded"):
        onnx_text.export_text_tower(
            tiny.model,
            text_features,
            embedder.tokenize(["seven", "eight"]),
            tmp_path / "t.onnx",
            TextRuntime.ONNX,
        )
    assert not list(tmp_path.iterdir())


def test_an_unknown_text_runtime_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="onnx-int8"):
        EncoderSettings(text_runtime="tensorrt")


async def test_the_encoder_serves_texts_through_the_runtime_it_is_given(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        text_runtime="onnx-int8",
        onnx_cache_dir=tmp_path,
    )
    expected = Embedder.from_checkpoint(
        load_checkpoint(tiny_checkpoint, device="cpu"), text_runtime="onnx-int8", onnx_cache_dir=tmp_path
    ).embed_texts(TEXTS)
    with serve_in_thread(settings) as running:
        async with EncoderClient(f"127.0.0.1:{running.port}") as client:
            served = await client.embed_texts(TEXTS)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    exported = cached_path(tmp_path, load_checkpoint(tiny_checkpoint).fingerprint, TextRuntime.ONNX_INT8)
    assert exported.is_file(), "the encoder exported into its configured cache directory"
