"""Every freezing mode: frozen parameters stay put after an optimizer step, trainable ones move."""

from __future__ import annotations

import pytest
import torch

from clipsearch.embedder import Embedder, image_features
from training.config import FreezeMode, TrainConfig
from training.freezing import apply_freezing, text_tower_frozen
from training.losses import clip_loss
from training.models import build_compact
from training.train import CaptionEncoder, build_optimizer


def _one_step(
    mode: FreezeMode, unlock_last_n: int = 1, model_name: str = "tiny"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], set[str]]:
    bundle = build_compact(model_name, seed=0)
    model = bundle.model
    trainable = set(apply_freezing(model, mode, unlock_last_n))
    embedder = Embedder(model, bundle.tokenizer, bundle.image_processor, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0))
    model.train()
    pixels = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    texts = CaptionEncoder(model, embedder)(["a one", "a two", "a three", "a four"])
    clip_loss(image_features(model, pixels), texts, model.logit_scale).backward()  # type: ignore[arg-type]
    optimizer.step()
    after = {name: p.detach().clone() for name, p in model.named_parameters()}
    return before, after, trainable


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("model_name", ["tiny", "tiny-convnext"])
@pytest.mark.parametrize(
    ("mode", "unlock"),
    [(FreezeMode.ALL, 1), (FreezeMode.LOCK_TEXT, 1), (FreezeMode.LAST_N, 1), (FreezeMode.LAST_N, 0)],
)
def test_only_trainable_parameters_change(mode: FreezeMode, unlock: int, model_name: str) -> None:
    before, after, trainable = _one_step(mode, unlock, model_name)
    changed = _changed(before, after)
    # Position ids and the like are buffers; every trainable tensor gets a gradient here.
    assert changed == trainable


def test_modes_select_the_documented_parts() -> None:
    _, _, everything = _one_step(FreezeMode.ALL)
    _, _, lock_text = _one_step(FreezeMode.LOCK_TEXT)
    _, _, last_n = _one_step(FreezeMode.LAST_N, 1)
    assert any(name.startswith("text_model.") for name in everything)
    assert not any(name.startswith("text_model.") for name in lock_text)
    assert {"text_projection.weight", "visual_projection.weight", "logit_scale"} <= lock_text
    assert any(name.startswith("vision_model.embeddings") for name in lock_text)
    assert not any(name.startswith("vision_model.embeddings") for name in last_n)
    assert any(name.startswith("vision_model.encoder.layers.0.") for name in last_n)  # tiny has one block
    assert last_n < lock_text < everything


def test_text_tower_frozen_reports_the_mode() -> None:
    model = build_compact("tiny").model
    apply_freezing(model, FreezeMode.LOCK_TEXT)
    assert text_tower_frozen(model)
    apply_freezing(model, FreezeMode.ALL)
    assert not text_tower_frozen(model)


def test_last_n_on_convnext_unlocks_the_last_block_and_final_norm() -> None:
    _, _, last_n = _one_step(FreezeMode.LAST_N, 1, "tiny-convnext")
    vision = {name for name in last_n if name.startswith("vision_model.")}
    # tiny-convnext has two stages of one block each: only the second stage's block and the final norm.
    assert vision
    assert all(
        name.startswith(("vision_model.encoder.stages.1.layers.0.", "vision_model.layernorm."))
        for name in vision
    )
    assert any(name.startswith("vision_model.layernorm.") for name in vision)
