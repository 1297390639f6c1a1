"""Emoji training data: one concept per emoji, four drawing styles, captions from names and keywords.

Images are read with the shared reader (`clipsearch.datasets.read_emoji`); the line art goes
through the `line-art` sketch normalisation first, exactly as a canvas drawing does in the encoder,
so the sketch view the model learns is the one it is queried with. Captions are sampled per step
from each concept's label, its keywords and templates; a batch pairs two styles of each concept for
the cross-style image-image term.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clipsearch.datasets import (
    LINE_ART_STYLE,
    DatasetError,
    EmojiCollection,
    EmojiConcept,
    heldout_concepts,
    read_emoji,
)
from clipsearch.preprocess import ImageInputError, SketchNormalization, decode_image, normalize_sketch
from training.config import AugmentConfig, DataConfig
from training.data import PairData, preprocess

log = logging.getLogger(__name__)

# Caption templates; "{}" is the label ("teapot"). The free-form evaluation queries
# (training/emoji_queries.py) use other wordings and never these.
LABEL_TEMPLATES = [
    "{}",
    "{}",
    "an emoji of {}",
    "{} emoji",
    "a picture of {}",
    "a drawing of {}",
    "an icon of {}",
    "a sketch of {}",
]
KEYWORD_TEMPLATES = ["{}", "an emoji of {}"]
# A keyword shared by more concepts than this says little about any of them ("face", "flag"):
# it is kept in the keyword lists but never a caption on its own.
MAX_KEYWORD_CONCEPTS = 8
KEYWORD_SUBSETS = 3  # random keyword combinations per concept ("drink, pot, tea")
PROMPT_TEMPLATES = ["{}", "an emoji of {}", "a picture of {}"]


def concept_captions(concept: EmojiConcept, keyword_counts: Counter[str], seed: int) -> list[str]:
    """Every caption of one concept: its label in templates, keyword lists and specific keywords."""
    rng = random.Random(f"{seed}:{concept.id}")
    captions = [template.format(concept.label) for template in LABEL_TEMPLATES]
    tags = [tag for tag in concept.tags if tag.lower() != concept.label.lower()]
    if tags:
        captions.append(", ".join(tags))
        captions.append(f"{concept.label}: {', '.join(tags)}")
        for _ in range(KEYWORD_SUBSETS):
            subset = rng.sample(tags, k=min(len(tags), rng.randint(2, 3)))
            captions.append(", ".join(subset))
        specific = [tag for tag in tags if keyword_counts[tag] <= MAX_KEYWORD_CONCEPTS]
        for tag in rng.sample(specific, k=min(len(specific), 3)):
            captions.append(rng.choice(KEYWORD_TEMPLATES).format(tag))
    return list(dict.fromkeys(captions))


def keyword_counts(concepts: Sequence[EmojiConcept]) -> Counter[str]:
    """In how many concepts each keyword appears."""
    return Counter(tag for concept in concepts for tag in set(concept.tags))


def line_art_view(image: Image.Image) -> Image.Image:
    """The line art as the encoder would see it drawn: through the `line-art` sketch normalisation."""
    return normalize_sketch(image, SketchNormalization.LINE_ART)


def load_emoji_images(
    collection: EmojiCollection, strict: bool = False
) -> tuple[list[Image.Image], list[int], list[str]]:
    """(images, item indices kept, problems): decoded RGB images, the line art sketch-normalised."""
    images: list[Image.Image] = []
    kept: list[int] = []
    problems: list[str] = []
    for index, item in enumerate(collection.items):
        try:
            image = decode_image(item.image_path.read_bytes())
            if item.style == LINE_ART_STYLE:
                image = line_art_view(image)
        except (OSError, ImageInputError) as exc:
            message = f"image {item.relative_path} (id {item.id}, {item.style}): {exc}"
            if strict:
                raise DatasetError(message) from None
            log.warning("skipping %s", message)
            problems.append(message)
            continue
        images.append(image)
        kept.append(index)
    return images, kept, problems


def emoji_pairs(config: DataConfig, processor: Any) -> PairData:
    """The emoji collection as PairData: one class per concept (held-out concepts left out)."""
    collection = read_emoji(
        config.emoji_dir, styles=config.emoji_styles, strict=config.strict, download=config.download
    )
    held_out = heldout_concepts(
        [c.id for c in collection.concepts], config.holdout_fraction, config.holdout_seed
    )
    concepts = [c for c in collection.concepts if c.id not in held_out]
    position = {concept.id: label for label, concept in enumerate(concepts)}
    collection.items = [item for item in collection.items if item.id in position][: config.limit]
    images, kept, problems = load_emoji_images(collection, config.strict)
    if not images:
        raise DatasetError(f"{collection.root} has no usable emoji images")
    counts = keyword_counts(collection.concepts)
    items = [collection.items[i] for i in kept]
    return PairData(
        pixels=preprocess(images, processor),
        labels=torch.tensor([position[item.id] for item in items]),
        captions=None,
        class_names=[concept.label for concept in concepts],
        skipped=[*collection.problems, *problems],
        styles=[item.style for item in items],
        class_captions=[concept_captions(concept, counts, config.holdout_seed) for concept in concepts],
        prompt_templates=list(PROMPT_TEMPLATES),
        white_background=True,
    )


def sample_class_captions(class_captions: Sequence[Sequence[str]], generator: torch.Generator) -> list[str]:
    """One caption per class, drawn afresh: the concept bank of a step."""
    picks = torch.randint(0, 1 << 30, (len(class_captions),), generator=generator).tolist()
    return [options[pick % len(options)] for options, pick in zip(class_captions, picks, strict=True)]


def cross_style_batches(
    labels: torch.Tensor,
    styles: Sequence[str] | None,
    pairs_per_batch: int,
    batches: int,
    generator: torch.Generator,
    line_art_share: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` batches of (first, second) item indices: two images (styles) of `pairs_per_batch` concepts.

    Concepts come in shuffled passes, each once per pass; with probability `line_art_share` one of
    the two is the concept's line art (the sketch view), otherwise two random styles. Without
    styles (a labelled caption CSV), any two images of a label.
    """
    by_concept: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_concept.setdefault(label, []).append(index)
    usable = [label for label, items in by_concept.items() if len(items) >= 2]
    if len(usable) < 2:
        raise DatasetError("cross-style pairs need at least two concepts with two styles each")
    per_batch = min(pairs_per_batch, len(usable))
    seed = int(torch.randint(0, 1 << 31, (1,), generator=generator))
    rng = random.Random(seed)
    queue: list[int] = []
    out = []
    for _ in range(batches):
        if len(queue) < per_batch:
            # A pass ends: its last concepts first, then a new shuffled pass (no concept twice a batch).
            order = usable[:]
            rng.shuffle(order)
            queue = (
                queue
                + [label for label in order if label not in queue]
                + [label for label in order if label in queue]
            )
        chosen, queue = queue[:per_batch], queue[per_batch:]
        first, second = [], []
        for label in chosen:
            items = by_concept[label]
            line = [i for i in items if styles is not None and styles[i] == LINE_ART_STYLE]
            if line and rng.random() < line_art_share:
                colour = [i for i in items if styles is not None and styles[i] != LINE_ART_STYLE] or items
                a, b = line[0], rng.choice([i for i in colour if i != line[0]] or items)
            else:
                a, b = rng.sample(items, 2)
            if rng.random() < 0.5:
                a, b = b, a
            first.append(a)
            second.append(b)
        out.append((torch.tensor(first), torch.tensor(second)))
    return out


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]).expand_as(rgb)


def drawing_augment(
    pixels: torch.Tensor,
    line_art: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """Colour (hue, saturation, strength, greyscale) and stroke-thickness changes that keep white white.

    Works on normalised pixels of pictures on white; `line_art` (n,) marks the line-art items, whose
    strokes are thickened or thinned instead of recoloured. The affine part is `training.data.augment`.
    """
    if not config.enabled:
        return pixels
    n = pixels.shape[0]
    device = pixels.device
    mean, std = mean.to(device), std.to(device)
    rgb = pixels * std + mean

    def draw(low: float, high: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (high - low) + low).to(device).view(n, 1, 1, 1)

    # Hue: rotate colours about the grey axis (white and black stay).
    angle = draw(-config.max_hue_deg, config.max_hue_deg) * (torch.pi / 180)
    grey = _luma(rgb)
    chroma = rgb - grey
    axis = torch.ones(3, device=device) / 3**0.5
    cross = torch.linalg.cross(axis.view(1, 3, 1, 1).expand_as(chroma), chroma, dim=1)
    chroma = chroma * torch.cos(angle) + cross * torch.sin(angle)
    chroma = chroma * draw(1 - config.saturation, 1 + config.saturation)
    greyscale = (torch.rand(n, generator=generator) < config.greyscale_share).to(device).view(n, 1, 1, 1)
    chroma = chroma * (~greyscale)
    rgb = (grey + chroma).clamp(0, 1)
    # Strength: colours nearer white or deeper, white itself unchanged.
    rgb = 1 - (1 - rgb) * draw(1 - config.strength, 1 + config.strength)
    # Strokes of the line art: a darker or lighter neighbourhood blended in thickens or thins them.
    if config.stroke and bool(line_art.any()):
        amount = draw(-0.5, 1.0)
        thick = -F.max_pool2d(-rgb, 3, stride=1, padding=1)
        thin = F.max_pool2d(rgb, 3, stride=1, padding=1)
        stroked = torch.where(amount > 0, rgb + amount * (thick - rgb), rgb - amount * (thin - rgb))
        rgb = torch.where(line_art.to(device).view(n, 1, 1, 1), stroked, rgb)
    return (rgb.clamp(0, 1) - mean) / std
