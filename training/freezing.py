"""Which parameters train: everything, everything but the text tower, or only the last vision blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

from training.config import FreezeMode


def _vision_blocks(model: Any) -> list[nn.Module]:
    """The vision tower's blocks in order: ViT encoder layers, or ConvNeXt layers stage by stage."""
    encoder = model.vision_model.encoder
    if hasattr(encoder, "stages"):
        return [layer for stage in encoder.stages for layer in stage.layers]
    return list(encoder.layers)


def _final_norm(model: Any) -> nn.Module:
    """The norm after the last block (CLIP ViT: post_layernorm; ConvNeXt: layernorm after pooling)."""
    vision = model.vision_model
    return vision.post_layernorm if hasattr(vision, "post_layernorm") else vision.layernorm


def apply_freezing(model: Any, mode: FreezeMode, unlock_last_n: int = 1) -> list[str]:
    """Set requires_grad for a CLIPModel or VisionTextDualEncoderModel; returns the trainable names.

    Locking the text tower keeps its projection trainable, so a frozen
    pretrained text encoder (MiniLM) can still be mapped into the joint space.
    """
    for parameter in model.parameters():
        parameter.requires_grad = mode is FreezeMode.ALL
    if mode is not FreezeMode.ALL:
        trainable: list[nn.Module] = [model.visual_projection, model.text_projection]
        if mode is FreezeMode.LOCK_TEXT:
            trainable.append(model.vision_model)
        else:
            blocks = _vision_blocks(model)
            trainable.extend(blocks[len(blocks) - unlock_last_n :] if unlock_last_n else [])
            # The final layer norm reads the last block's output: it moves with it.
            if unlock_last_n:
                trainable.append(_final_norm(model))
        for module in trainable:
            for parameter in module.parameters():
                parameter.requires_grad = True
        model.logit_scale.requires_grad = True
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def text_tower_frozen(model: Any) -> bool:
    return not any(parameter.requires_grad for parameter in model.text_model.parameters())
