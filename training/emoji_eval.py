"""Emoji evaluation: unseen concepts, an unseen style, line art -> colour, "which emoji is this?",
and the served model's label, keyword and free-form queries (see `python -m training.evaluate`).

Which concepts and styles a checkpoint never saw comes from its training record (`training.json`:
data.holdout_fraction, data.holdout_seed, data.emoji_styles); the baseline is measured on the same
split. Text queries are the labels exactly as in emoji.csv; line-art queries go through the
checkpoint's sketch normalisation, as the encoder applies it to a drawing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.checkpoint import LoadedCheckpoint
from clipsearch.datasets import EMOJI_STYLES, LINE_ART_STYLE, DatasetError, heldout_concepts, read_emoji
from clipsearch.embedder import Embedder
from clipsearch.preprocess import ImageInputError, decode_image, decode_sketch, normalize_sketch
from training import plots
from training.config import DataConfig
from training.data import preprocess
from training.emoji import MAX_KEYWORD_CONCEPTS
from training.emoji_queries import FREE_FORM_QUERIES
from training.emoji_sketches import drawn_sketches
from training.metrics import top_k

log = logging.getLogger(__name__)

KS = (1, 5, 10)
EMBED_CHUNK = 512
COLOUR_STYLES = tuple(style for style in EMOJI_STYLES if style != LINE_ART_STYLE)


@dataclass(frozen=True)
class EmojiSplit:
    """What a model was trained on: the concepts held out and the styles seen."""

    heldout: frozenset[str]
    trained_styles: tuple[str, ...]
    holdout_fraction: float
    holdout_seed: int

    @classmethod
    def of_checkpoint(
        cls, path: Path, concept_ids: list[str], override: DataConfig | None = None
    ) -> EmojiSplit:
        """From the checkpoint's training record; without one, nothing held out and every style seen."""
        record: dict[str, Any] = {}
        history = path / "training.json"
        if history.is_file():
            record = json.loads(history.read_text())["config"].get("data", {})
        if record.get("kind", "emoji") != "emoji":
            record = {}
        fraction = float(record.get("holdout_fraction", 0.0))
        seed = int(record.get("holdout_seed", 0))
        styles = tuple(record.get("emoji_styles", EMOJI_STYLES))
        if override is not None and override.holdout_fraction > 0:
            fraction, seed = override.holdout_fraction, override.holdout_seed
        if override is not None and tuple(override.emoji_styles) != EMOJI_STYLES:
            styles = tuple(override.emoji_styles)
        return cls(frozenset(heldout_concepts(concept_ids, fraction, seed)), styles, fraction, seed)


@dataclass
class EmojiData:
    """Every image of the collection (all styles), decoded once for all the models evaluated."""

    ids: np.ndarray  # (n,) concept id per image
    concept: np.ndarray  # (n,) concept index per image
    styles: np.ndarray  # (n,) style per image
    groups: np.ndarray  # (n,) group per image
    images: list[Image.Image]  # colour images decoded on white; line art sketch-normalised
    labels: list[str]  # per concept
    concept_ids: list[str]
    tags: list[tuple[str, ...]]  # per concept
    problems: list[str]


def load_emoji_eval(config: DataConfig, normalisation: Any) -> EmojiData:
    collection = read_emoji(config.emoji_dir, strict=config.strict, download=config.download)
    index = {concept.id: i for i, concept in enumerate(collection.concepts)}
    images, ids, styles, groups, problems = [], [], [], [], list(collection.problems)
    for item in collection.items[: config.limit]:
        try:
            image = decode_image(item.image_path.read_bytes())
            if item.style == LINE_ART_STYLE:
                image = normalize_sketch(image, normalisation)  # the query path of a drawing
        except (OSError, ImageInputError) as exc:
            problems.append(f"image {item.relative_path} (id {item.id}): {exc}")
            continue
        images.append(image)
        ids.append(item.id)
        styles.append(item.style)
        groups.append(item.group)
    return EmojiData(
        ids=np.array(ids),
        concept=np.array([index[i] for i in ids]),
        styles=np.array(styles),
        groups=np.array(groups),
        images=images,
        labels=[c.label for c in collection.concepts],
        concept_ids=[c.id for c in collection.concepts],
        tags=[c.tags for c in collection.concepts],
        problems=problems,
    )


def _embed_images(embedder: Embedder, data: EmojiData, processor: Any) -> np.ndarray:
    out = []
    for start in range(0, len(data.images), EMBED_CHUNK):
        pixels = preprocess(data.images[start : start + EMBED_CHUNK], processor)
        out.append(embedder.embed_pixel_values(pixels))
    return np.concatenate(out)


class TextEmbedder:
    """Unit text embeddings of one checkpoint: `Embedder.embed_texts`, or, with `store`, the same
    computation with the text tower's outputs read from (and added to) a kept cache.

    The cache (training's CaptionEncoder.warm) holds the tower's pooled outputs keyed by a hash of
    the tower's weights, so it is used only for a checkpoint whose text tower is that one (the frozen
    MiniLM); the projection always runs. On a busy CPU the tower costs minutes per thousand texts.
    """

    def __init__(self, embedder: Embedder, store: Path | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self.cached: Any = None
        if store is not None and embedder.text_runtime.value == "torch":
            from training.train import CaptionEncoder

            self.cached = CaptionEncoder(embedder.model, embedder)
            self.cached.frozen = True

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.cached is None:
            return np.concatenate(
                [self.embedder.embed_texts(texts[s : s + 256]) for s in range(0, len(texts), 256)]
            )
        import torch

        with torch.no_grad():
            self.cached.warm(texts, self.store)
            features = self.cached(list(texts))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def _recall(ranked_keys: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    hits = ranked_keys == keys[:, None]
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in KS} | {"queries": len(keys)}


def _hits(ranked_sets: list[list[bool]], k: int) -> float:
    return float(np.mean([any(row[:k]) for row in ranked_sets])) if ranked_sets else float("nan")


def _subset_metrics(
    queries: np.ndarray, query_keys: np.ndarray, items: np.ndarray, item_keys: np.ndarray, mask: np.ndarray
) -> dict[str, float] | None:
    if not mask.any():
        return None
    ranked = item_keys[top_k(queries[mask], items, max(KS))]
    return _recall(ranked, query_keys[mask])


def emoji_metrics(
    embedder: Embedder, checkpoint: LoadedCheckpoint, data: EmojiData, split: EmojiSplit, texts: TextEmbedder
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """All the emoji metrics of one model; also its image and label embeddings (for the pictures)."""
    images = _embed_images(embedder, data, checkpoint.image_processor)
    labels = texts(data.labels)
    concept_ids = np.array(data.concept_ids)
    unseen_concept = np.isin(concept_ids, list(split.heldout))  # per concept
    unseen_image = unseen_concept[data.concept]  # per image
    metrics: dict[str, Any] = {
        "images": len(images),
        "concepts": len(data.labels),
        "split": {
            "heldout_concepts": len(split.heldout),
            "holdout_fraction": split.holdout_fraction,
            "holdout_seed": split.holdout_seed,
            "trained_styles": list(split.trained_styles),
        },
    }
    all_concepts = np.arange(len(data.labels))

    # Labels -> all images (every style): the served model's label queries, and unseen concepts.
    metrics["label_to_image"] = _subset_metrics(
        labels, all_concepts, images, data.concept, np.ones(len(labels), bool)
    )
    if split.heldout:
        metrics["unseen_concepts"] = {
            "text_to_image": _subset_metrics(labels, all_concepts, images, data.concept, unseen_concept),
            "seen_text_to_image": _subset_metrics(
                labels, all_concepts, images, data.concept, ~unseen_concept
            ),
        }

    # Unseen style: its images against the other styles, and against all the labels.
    unseen_styles = [s for s in COLOUR_STYLES if s not in split.trained_styles]
    style_results = {}
    for style in unseen_styles:
        query = data.styles == style
        gallery = ~query
        ranked = data.concept[gallery][top_k(images[query], images[gallery], max(KS))]
        caption_ranked = top_k(images[query], labels, max(KS))
        keys = data.concept[query]
        result: dict[str, Any] = {}
        for name, mask in (("seen_concepts", ~unseen_image[query]), ("unseen_concepts", unseen_image[query])):
            if mask.any():
                result[name] = {
                    "image_to_image": _recall(ranked[mask], keys[mask]),
                    "image_to_caption": _recall(caption_ranked[mask], keys[mask]),
                }
        style_results[style] = result
    if style_results:
        metrics["unseen_style"] = style_results

    # Line art (the sketch view) -> colour images only.
    line = data.styles == LINE_ART_STYLE
    colour = ~line
    if line.any():
        ranked = data.concept[colour][top_k(images[line], images[colour], max(KS))]
        keys = data.concept[line]
        unseen_line = unseen_image[line]
        metrics["line_art_to_colour"] = {"all": _recall(ranked, keys)}
        for name, mask in (("seen_concepts", ~unseen_line), ("unseen_concepts", unseen_line)):
            if mask.any() and (~mask).any():
                metrics["line_art_to_colour"][name] = _recall(ranked[mask], keys[mask])

    # Keyword queries: keywords of at most MAX_KEYWORD_CONCEPTS concepts; right = a concept that has it.
    counts = Counter(tag for tags in data.tags for tag in set(tags))
    keywords = sorted(tag for tag, n in counts.items() if n <= MAX_KEYWORD_CONCEPTS)
    rng = np.random.default_rng(0)
    keywords = sorted(rng.choice(keywords, size=min(600, len(keywords)), replace=False).tolist())
    if keywords:
        has = {tag: {i for i, tags in enumerate(data.tags) if tag in tags} for tag in keywords}
        ranked = data.concept[top_k(texts(keywords), images, 10)]
        rows = [[int(c) in has[tag] for c in row] for tag, row in zip(keywords, ranked, strict=True)]
        metrics["keyword_queries"] = {
            "hit@1": _hits(rows, 1),
            "hit@10": _hits(rows, 10),
            "precision@10": float(np.mean([np.mean(row) for row in rows])),
            "queries": len(keywords),
        }

    # Free-form text that is not a label (training/emoji_queries.py): an accepted concept in the top 5.
    position = {label: i for i, label in enumerate(data.labels)}
    free = {q: {position[a] for a in ok if a in position} for q, ok in FREE_FORM_QUERIES.items()}
    free = {q: ok for q, ok in free.items() if ok}
    if free:
        queries = list(free)
        ranked = data.concept[top_k(texts(queries), images, 10)]
        rows = [[int(c) in free[q] for c in row] for q, row in zip(queries, ranked, strict=True)]
        metrics["free_form_queries"] = {
            "hit@1": _hits(rows, 1),
            "hit@5": _hits(rows, 5),
            "hit@10": _hits(rows, 10),
            "queries": len(queries),
            "missed_top5": [q for q, row in zip(queries, rows, strict=True) if not any(row[:5])],
        }
    # Simple canvas drawings (training/emoji_sketches.py) through the checkpoint's sketch normalisation.
    drawn = [
        (name, decode_sketch(png, checkpoint.meta.sketch_normalization), ok)
        for name, _, png, ok in drawn_sketches()
    ]
    drawn_ok = [{position[a] for a in ok if a in position} for _, _, ok in drawn]
    keep = [i for i, ok in enumerate(drawn_ok) if ok]
    if keep:
        vectors = embedder.embed_images([drawn[i][1] for i in keep])
        ranked = data.concept[top_k(vectors, images, 10)]
        rows = [[int(c) in drawn_ok[i] for c in row] for i, row in zip(keep, ranked, strict=True)]
        metrics["drawn_sketches"] = {
            "hit@1": _hits(rows, 1),
            "hit@10": _hits(rows, 10),
            "queries": len(keep),
            "missed_top10": sorted({drawn[i][0] for i, row in zip(keep, rows, strict=True) if not any(row)}),
        }
    return metrics, images, labels


def emoji_metric_rows(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat rows for the model card and the console, in the order of the issue's targets."""
    rows: dict[str, float] = {}
    unseen = metrics.get("unseen_concepts")
    if unseen and unseen["text_to_image"]:
        for k in ("R@1", "R@5", "R@10"):
            rows[f"unseen concepts: label->image {k}"] = unseen["text_to_image"][k]
    for style, result in metrics.get("unseen_style", {}).items():
        seen = result.get("seen_concepts")
        if seen:
            rows[f"unseen style ({style}): top-1 concept"] = seen["image_to_image"]["R@1"]
            rows[f"unseen style ({style}): hit@10"] = seen["image_to_image"]["R@10"]
            rows[f"unseen style ({style}): image->caption top-1"] = seen["image_to_caption"]["R@1"]
            rows[f"unseen style ({style}): image->caption top-5"] = seen["image_to_caption"]["R@5"]
        both = result.get("unseen_concepts")
        if both:
            rows[f"unseen style and concepts ({style}): hit@10"] = both["image_to_image"]["R@10"]
            rows[f"unseen style and concepts ({style}): image->caption top-5"] = both["image_to_caption"][
                "R@5"
            ]
    line = metrics.get("line_art_to_colour")
    if line:
        rows["line art -> colour: top-1"] = line["all"]["R@1"]
        rows["line art -> colour: hit@10"] = line["all"]["R@10"]
        if "seen_concepts" in line:
            rows["line art -> colour, seen concepts: hit@10"] = line["seen_concepts"]["R@10"]
            rows["line art -> colour, unseen concepts: hit@10"] = line["unseen_concepts"]["R@10"]
    if metrics.get("label_to_image"):
        rows["label->image R@1 (all concepts, all styles)"] = metrics["label_to_image"]["R@1"]
        rows["label->image R@10 (all concepts, all styles)"] = metrics["label_to_image"]["R@10"]
    if "keyword_queries" in metrics:
        rows["keyword queries: hit@10"] = metrics["keyword_queries"]["hit@10"]
        rows["keyword queries: precision@10"] = metrics["keyword_queries"]["precision@10"]
    if "drawn_sketches" in metrics:
        rows["canvas drawings: accepted concept first"] = metrics["drawn_sketches"]["hit@1"]
        rows["canvas drawings: accepted concept in top 10"] = metrics["drawn_sketches"]["hit@10"]
    if "free_form_queries" in metrics:
        rows["free-form queries: accepted concept in top 5"] = metrics["free_form_queries"]["hit@5"]
        rows["free-form queries: accepted concept in top 10"] = metrics["free_form_queries"]["hit@10"]
    return rows


def _thumb(image: Image.Image, size: int = 64) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) / 255.0


def draw_emoji(
    out: Path,
    runs: list[tuple[str, np.ndarray, np.ndarray, TextEmbedder]],
    data: EmojiData,
    normalisation: Any,
) -> list[str]:
    """The pictures: a text-query grid, a line-art -> colour grid, a drawing grid, the embedding map."""
    name, images, _, texts = runs[-1]
    files = []
    queries = [
        "a cup of tea",
        "hot soup",
        "a surprised face",
        "a flower",
        "a bell",
        "a kitty",
        "a rocket",
        "pizza",
    ]
    thumbs = [_thumb(image) for image in data.images]
    gallery = np.stack(thumbs)
    results = top_k(texts(queries), images, 8)
    position = {label: i for i, label in enumerate(data.labels)}
    accepted = [{position[a] for a in FREE_FORM_QUERIES.get(q, [q]) if a in position} for q in queries]
    correct = np.array(
        [[int(data.concept[i]) in ok for i in row] for ok, row in zip(accepted, results, strict=True)]
    )
    plots.retrieval_grid(
        out / "text_query_grid.png",
        f"{name}: top 8 images per text query",
        queries,
        results,
        gallery,
        correct,
    )
    files.append("text_query_grid.png")
    line = np.flatnonzero(data.styles == LINE_ART_STYLE)
    colour = np.flatnonzero(data.styles != LINE_ART_STYLE)
    if len(line) and len(colour):
        chosen = line[np.random.default_rng(1).choice(len(line), size=min(10, len(line)), replace=False)]
        ranked = colour[top_k(images[chosen], images[colour], 7)]
        columns = np.concatenate([chosen[:, None], ranked], axis=1)
        correct = data.concept[columns] == data.concept[chosen][:, None]
        plots.retrieval_grid(
            out / "line_art_to_colour_grid.png",
            f"{name}: line art (first column) -> top 7 colour images",
            [data.labels[int(data.concept[i])][:28] for i in chosen],
            columns,
            gallery,
            correct,
        )
        files.append("line_art_to_colour_grid.png")
    # One canvas drawing per shape (medium pen), as the model sees it, and its top 7 images.
    drawn = [(n, decode_sketch(png, normalisation), ok) for n, pen, png, ok in drawn_sketches() if pen == 10][
        :12
    ]
    vectors = texts.embedder.embed_images([image for _, image, _ in drawn])
    ranked = top_k(vectors, images, 7)
    sketch_thumbs = np.stack([_thumb(image) for _, image, _ in drawn])
    grid_images = np.concatenate([gallery, sketch_thumbs])
    columns = np.concatenate([len(gallery) + np.arange(len(drawn))[:, None], ranked], axis=1)
    accepted = [{position[a] for a in ok if a in position} for _, _, ok in drawn]
    correct = np.array(
        [[True] + [int(data.concept[i]) in ok for i in row] for ok, row in zip(accepted, ranked, strict=True)]
    )
    plots.retrieval_grid(
        out / "drawing_grid.png",
        f"{name}: canvas drawings as the model sees them (first column) -> top 7 images",
        [n for n, _, _ in drawn],
        columns,
        grid_images,
        correct,
    )
    files.append("drawing_grid.png")
    group_names = sorted(set(data.groups.tolist()))
    group_index = np.array([group_names.index(g) for g in data.groups])
    panels = [
        plots.MapPanel(title, embeddings, group_index, embed(group_names), group_names)
        for title, embeddings, _, embed in runs
    ]
    plots.embedding_maps(out / "embedding_map.png", panels)
    files.append("embedding_map.png")
    return files


def check_emoji_data(data: EmojiData) -> None:
    if len(data.images) == 0:
        raise DatasetError("no emoji images to evaluate on")
