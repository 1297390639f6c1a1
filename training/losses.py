"""Contrastive losses: symmetric InfoNCE (optionally label-aware) and an image-image pair loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_logits(
    logits: torch.Tensor, labels: torch.Tensor | None, text_keys: torch.Tensor | None = None
) -> torch.Tensor:
    """Remove same-label (or same-caption) off-diagonal pairs from the negatives: not wrong matches."""
    if labels is None and text_keys is None:
        return logits
    same = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    for keys in (labels, text_keys):
        if keys is not None:
            same |= keys.view(-1, 1) == keys.view(1, -1)
    same.fill_diagonal_(False)
    return logits.masked_fill(same, float("-inf"))


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    text_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image i, text i) pairs.

    `logit_scale` is the log of the inverse temperature (learnable, as in CLIP).
    With `labels`, pairs that share a label are neither positives nor negatives; with `text_keys`
    (one id per distinct caption), neither are pairs whose captions are the same text.
    """
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    text_embeds = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.float().exp() * image_embeds @ text_embeds.T
    logits = _masked_logits(logits, labels, text_keys)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def image_pair_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE between two augmentations of the same images (SimCLR-style, symmetric)."""
    return clip_loss(first, second, logit_scale, labels)


def concept_bank_loss(
    image_embeds: torch.Tensor, concept_embeds: torch.Tensor, logit_scale: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Image -> text InfoNCE against one caption of every concept (row c: concept c), not just the
    batch's: the image's own concept is the positive, every other concept a negative."""
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    concept_embeds = F.normalize(concept_embeds.float(), dim=-1)
    logits = logit_scale.float().exp() * image_embeds @ concept_embeds.T
    return F.cross_entropy(logits, labels)
