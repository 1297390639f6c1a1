"""CPU inference modes: every offered mode embeds close to fp32, and never changes the caller's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from clipsearch import acceleration
from clipsearch.acceleration import MIN_COSINE, CpuMode, CpuModeError, resolve_cpu_mode
from clipsearch.checkpoint import LoadedCheckpoint, load_checkpoint
from clipsearch.embedder import Embedder
from clipsearch.encoder_client import EncoderClient
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from training.models import COMPACT_CONFIGS, build_compact

TEXTS = ["zero", "a handwritten digit seven", "the number 3", "sloppy neat bold thin eight nine"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedCheckpoint:
    return load_checkpoint(tiny_checkpoint, device="cpu")


def sample_images(size: int) -> list[Image.Image]:
    """Noise plus flat, gradient and stroke images: the structured ones are what real inputs look like."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size)
    arrays = [
        np.zeros((size, size, 3)),
        np.full((size, size, 3), 255.0),
        np.repeat(np.add.outer(ramp, ramp)[..., None] / 2, 3, axis=2),
        np.pad(
            np.full((size // 2, 4, 3), 255.0), ((size // 4, size // 4), (size // 2, size // 2 - 4), (0, 0))
        ),
        *(rng.integers(0, 256, (size, size, 3)) for _ in range(4)),
    ]
    return [Image.fromarray(array.astype(np.uint8)) for array in arrays]


@pytest.mark.parametrize("mode", list(CpuMode))
def test_every_mode_embeds_unit_vectors_close_to_fp32(loaded: LoadedCheckpoint, mode: CpuMode) -> None:
    reference = Embedder.from_checkpoint(loaded)
    embedder = Embedder.from_checkpoint(loaded, cpu_mode=mode)
    assert embedder.cpu_mode is mode
    images = sample_images(loaded.image_size)
    for got, want in (
        (embedder.embed_images(images), reference.embed_images(images)),
        (embedder.embed_texts(TEXTS), reference.embed_texts(TEXTS)),
    ):
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cosines = (got * want).sum(axis=1)
        assert cosines.min() >= MIN_COSINE[mode], f"{mode}: min cosine {cosines.min():.6f}"


@pytest.mark.parametrize("mode", [CpuMode.BF16, CpuMode.INT8_DYNAMIC, CpuMode.BF16_AUTOCAST])
def test_modes_leave_the_callers_model_as_it_was(loaded: LoadedCheckpoint, mode: CpuMode) -> None:
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    embedder = Embedder.from_checkpoint(loaded, cpu_mode=mode)
    embedder.embed_texts(TEXTS)
    after = loaded.model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name


def test_bf16_batches_match_one_by_one_closely(loaded: LoadedCheckpoint) -> None:
    # bf16 rounds every matrix product, and kernels may block a batch differently from a single
    # row: batched and one-by-one agree to bf16 precision, not to fp32's 1e-5.
    embedder = Embedder.from_checkpoint(loaded, cpu_mode=CpuMode.BF16)
    images = sample_images(loaded.image_size)
    batched = embedder.embed_images(images)
    alone = np.concatenate([embedder.embed_images([image]) for image in images])
    assert (batched * alone).sum(axis=1).min() >= MIN_COSINE[CpuMode.BF16]


def test_auto_picks_bf16_only_for_wide_models_on_cpus_with_native_bf16(
    loaded: LoadedCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = torch.device("cpu")
    wide = build_compact(COMPACT_CONFIGS["mnist-scratch"]).model
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: True)
    assert resolve_cpu_mode("auto", wide, cpu) is CpuMode.BF16
    assert resolve_cpu_mode("auto", loaded.model, cpu) is CpuMode.FP32  # 32 wide: bf16 does not pay
    assert resolve_cpu_mode("auto", wide, torch.device("cuda")) is CpuMode.FP32  # GPUs use the dtype
    assert resolve_cpu_mode("bf16-autocast", loaded.model, cpu) is CpuMode.BF16_AUTOCAST
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: False)
    assert resolve_cpu_mode("auto", wide, cpu) is CpuMode.FP32


def test_unknown_mode_names_the_choices(loaded: LoadedCheckpoint) -> None:
    with pytest.raises(CpuModeError, match=r"unknown CPU mode 'fp8'.*auto, fp32, bf16-autocast, bf16, int8"):
        Embedder.from_checkpoint(loaded, cpu_mode="fp8")


def test_encoder_setting_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValidationError, match="unknown CPU mode 'fast'"):
        EncoderSettings(cpu_mode="fast")


async def test_encoder_serves_in_the_configured_mode(loaded: LoadedCheckpoint, tiny_checkpoint: Path) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_enabled=False, cpu_mode="bf16"
    )
    reference = Embedder.from_checkpoint(loaded)
    with serve_in_thread(settings) as server:
        async with EncoderClient(f"127.0.0.1:{server.port}", timeout_s=30) as client:
            served = await client.embed_texts(TEXTS)
    fp32 = reference.embed_texts(TEXTS)
    cosines = (served * fp32).sum(axis=1)
    assert cosines.min() >= MIN_COSINE[CpuMode.BF16]
    # bf16 rounding shows: the service did not run the model in fp32.
    assert not np.allclose(served, fp32, atol=1e-6)
