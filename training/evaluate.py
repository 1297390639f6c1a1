"""Evaluate a checkpoint (optionally against a baseline): metrics.json, pictures and a model card.

    python -m training.evaluate CHECKPOINT [--baseline CHECKPOINT] [--mnist-dir DIR]
    python -m training.evaluate CHECKPOINT --captions pairs.csv | --image-folder DIR
    python -m training.evaluate CHECKPOINT --emoji-dir DIR [--baseline CHECKPOINT-init]

Metrics: zero-shot accuracy with prompt ensembles, text->image and image->text
Recall@1/5/10, and precision@10 of text queries in several phrasings per class,
including free-form ones that are not training templates. On the emoji (training/emoji_eval.py):
unseen concepts, an unseen style, line art -> colour, image -> caption over all labels, and the
served model's label, keyword and free-form queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clipsearch.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from clipsearch.datasets import EMOJI_STYLES, DatasetError
from clipsearch.embedder import Embedder
from clipsearch.logs import configure_logging
from clipsearch.onnx_text import TEXT_RUNTIME_CHOICES, TextRuntime
from training import plots
from training.config import DataConfig
from training.data import PairData, all_captions, load_pairs
from training.emoji_eval import (
    EmojiSplit,
    TextEmbedder,
    check_emoji_data,
    draw_emoji,
    emoji_metric_rows,
    emoji_metrics,
    load_emoji_eval,
)
from training.metrics import class_prototypes, precision_at_k, recall_at_k, top_k, zero_shot_accuracy
from training.queries import query_set

log = logging.getLogger(__name__)

KS = (1, 5, 10)
EMBED_CHUNK = 1024


@dataclass
class Evaluated:
    """One checkpoint's metrics and what the pictures need."""

    name: str
    metrics: dict[str, Any]
    image_embeddings: np.ndarray
    prototypes: np.ndarray | None
    embedder: Embedder


def embed_images(embedder: Embedder, pixels: torch.Tensor) -> np.ndarray:
    return np.concatenate(
        [embedder.embed_pixel_values(pixels[s : s + EMBED_CHUNK]) for s in range(0, len(pixels), EMBED_CHUNK)]
    )


def evaluate_checkpoint(
    checkpoint: LoadedCheckpoint, data_config: DataConfig, text_runtime: str = TextRuntime.TORCH
) -> tuple[Evaluated, PairData]:
    """Metrics of the checkpoint; `text_runtime` embeds the texts as the encoder would (onnx_text)."""
    embedder = Embedder.from_checkpoint(checkpoint, text_runtime=text_runtime)
    data = load_pairs(data_config, checkpoint.image_processor, "test")
    images = embed_images(embedder, data.pixels)
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint.path),
        "fingerprint": checkpoint.fingerprint,
        "images": len(data),
        "text_runtime": embedder.text_runtime.value,
    }
    prototypes = None
    if data.labels is not None and data.class_names:
        labels = data.labels.numpy()
        prototypes = class_prototypes(
            embedder, data.class_names, checkpoint.meta.prompt_templates, data.numerals
        )
        metrics["zero_shot_accuracy"] = zero_shot_accuracy(images, labels, prototypes)
        metrics["zero_shot_prompts"] = checkpoint.meta.prompt_templates
        captions = [
            (c, label)
            for label in range(len(data.class_names))
            for c in all_captions(data.class_names, data.numerals, label)
        ]
        texts = embedder.embed_texts([c for c, _ in captions])
        text_keys = np.array([label for _, label in captions])
        metrics["text_to_image"] = recall_at_k(texts, images, text_keys, labels, KS)
        metrics["image_to_text"] = recall_at_k(images, texts, labels, text_keys, KS)
        metrics["retrieval_relevance"] = "same label"
        queries = query_set(data.class_names, data.numerals)
        query_embeddings = embedder.embed_texts([q for q, _, _ in queries])
        query_labels = np.array([label for _, label, _ in queries])
        precision = precision_at_k(query_embeddings, images, query_labels, labels, 10)
        kinds = np.array([kind for _, _, kind in queries])
        metrics["precision_at_10"] = {
            "all": float(precision.mean()),
            "template": float(precision[kinds == "template"].mean()),
            "free_form": float(precision[kinds == "free-form"].mean()),
            "per_class": {
                name: float(precision[query_labels == label].mean())
                for label, name in enumerate(data.class_names)
            },
            "worst_queries": [
                {"query": queries[i][0], "p@10": float(precision[i])}
                for i in np.argsort(precision, kind="stable")[:5]
            ],
            "queries": len(queries),
        }
    else:
        assert data.captions is not None
        texts = embedder.embed_texts(data.captions)
        keys = np.unique(np.array(data.captions), return_inverse=True)[1]
        metrics["text_to_image"] = recall_at_k(texts, images, keys, keys, KS)
        metrics["image_to_text"] = recall_at_k(images, texts, keys, keys, KS)
        metrics["retrieval_relevance"] = "same caption"
    name = checkpoint.path.name
    return Evaluated(name, metrics, images, prototypes, embedder), data


def display_images(data: PairData, processor: Any) -> np.ndarray:
    """Pixel values back to (n, H, W, 3) in 0..1 for plotting."""
    mean = torch.tensor(getattr(processor, "image_mean", [0.0] * 3)).view(1, -1, 1, 1)
    std = torch.tensor(getattr(processor, "image_std", [1.0] * 3)).view(1, -1, 1, 1)
    return (data.pixels * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def draw(out: Path, runs: list[Evaluated], data: PairData, processor: Any) -> list[str]:
    """Write the PNGs; returns their file names."""
    files = []
    if data.labels is not None and all(run.prototypes is not None for run in runs):
        labels = data.labels.numpy()
        panels = [
            plots.MapPanel(run.name, run.image_embeddings, labels, run.prototypes, data.class_names)
            for run in runs
            if run.prototypes is not None
        ]
        plots.embedding_maps(out / "embedding_map.png", panels)
        files.append("embedding_map.png")
        samples = [
            int(np.flatnonzero(labels == label)[0])
            for label in range(len(data.class_names))
            if (labels == label).any()
        ][:12]
        heat = [
            (run.name, run.image_embeddings[samples] @ run.prototypes.T)
            for run in runs
            if run.prototypes is not None
        ]
        rows = [f"image of {data.class_names[labels[i]]}" for i in samples]
        plots.similarity_heatmap(out / "similarity_heatmap.png", heat, rows, data.class_names)
        files.append("similarity_heatmap.png")
        free_form = [q for q in query_set(data.class_names, data.numerals) if q[2] == "free-form"]
        # One free-form query per class (up to 10 rows), cycling through the phrasings.
        chosen = []
        for label in range(min(len(data.class_names), 10)):
            options = [q for q in free_form if q[1] == label]
            chosen.append(options[label % len(options)])
        trained = runs[-1]
        query_embeddings = trained.embedder.embed_texts([q for q, _, _ in chosen])
        results = top_k(query_embeddings, trained.image_embeddings, 8)
        correct = labels[results] == np.array([label for _, label, _ in chosen])[:, None]
        plots.retrieval_grid(
            out / "retrieval_grid.png",
            f"{trained.name}: top 8 images per text query",
            [q for q, _, _ in chosen],
            results,
            display_images(data, processor),
            correct,
        )
        files.append("retrieval_grid.png")
    else:
        n = min(len(data), 10)
        assert data.captions is not None
        heat = [
            (run.name, run.image_embeddings[:n] @ run.embedder.embed_texts(data.captions[:n]).T)
            for run in runs
        ]
        plots.similarity_heatmap(
            out / "similarity_heatmap.png", heat, [f"image {i}" for i in range(n)], data.captions[:n]
        )
        files.append("similarity_heatmap.png")
    return files


def _fmt(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, float) else "–"


def metric_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    if "emoji" in metrics:
        return emoji_metric_rows(metrics["emoji"])
    rows: dict[str, Any] = {}
    if "zero_shot_accuracy" in metrics:
        rows["zero-shot accuracy (prompt ensemble)"] = metrics["zero_shot_accuracy"]
    for direction in ("text_to_image", "image_to_text"):
        for k, value in metrics[direction].items():
            rows[f"{direction.replace('_', ' ')} {k}"] = value
    if "precision_at_10" in metrics:
        for kind in ("all", "template", "free_form"):
            rows[f"text query precision@10 ({kind.replace('_', '-')})"] = metrics["precision_at_10"][kind]
    return rows


def describe_vision(vision: Any) -> str:
    if vision.model_type == "convnext":
        return (
            f"ConvNeXt, {vision.image_size}px images, stem patch {vision.patch_size}, stage widths "
            f"{vision.hidden_sizes}, depths {vision.depths}"
        )
    return (
        f"ViT, {vision.image_size}px images, patch {vision.patch_size}, width {vision.hidden_size}, "
        f"{vision.num_hidden_layers} layers"
    )


def evaluation_scope(metrics: dict[str, Any]) -> str:
    if "emoji" in metrics:
        split = metrics["emoji"]["split"]
        return (
            f"On all {metrics['images']} emoji images (`python -m training.evaluate --emoji-dir`), "
            f"{metrics['emoji']['concepts']} concepts; trained on styles {', '.join(split['trained_styles'])}, "
            f"{split['heldout_concepts']} concepts held out (fraction {split['holdout_fraction']}, seed "
            f"{split['holdout_seed']}). Relevance: the same concept (keyword and free-form queries: an "
            "accepted concept)."
        )
    return (
        f"On {metrics['images']} held-out images (`python -m training.evaluate`); retrieval "
        f"relevance: {metrics['retrieval_relevance']}."
    )


def model_card(checkpoint: LoadedCheckpoint, report: dict[str, Any], pictures: list[str], out: Path) -> str:
    config = checkpoint.model.config
    vision = config.vision_config
    text = config.text_config
    trained = metric_rows(report["checkpoint"])
    baseline = metric_rows(report["baseline"]) if report.get("baseline") else None
    lines = [
        f"# {checkpoint.path.name}",
        "",
        f"A CLIP-style dual encoder (`{config.model_type}`) for clipsearch, {checkpoint.embedding_dim}-dim "
        f"embeddings. Vision: {describe_vision(vision)}. Text: `{text.model_type}`, width "
        f"{text.hidden_size}, {text.num_hidden_layers} layers. Sketch normalisation: "
        f"`{checkpoint.meta.sketch_normalization.value}`. Weights fingerprint `{checkpoint.fingerprint[:16]}`.",
        "",
        "## Evaluation",
        "",
        evaluation_scope(report["checkpoint"]),
        "",
        "| metric | " + ("baseline | " if baseline else "") + "this model |",
        "|---|" + ("---|" if baseline else "") + "---|",
    ]
    for metric, value in trained.items():
        before = f"{_fmt(baseline.get(metric))} | " if baseline is not None else ""
        lines.append(f"| {metric} | {before}{_fmt(value)} |")
    history = checkpoint.path / "training.json"
    if history.is_file():
        record = json.loads(history.read_text())
        progress = record["progress"]
        lines += [
            "",
            "## Training",
            "",
            f"`python -m training train` with model `{record['config']['model']}`, "
            f"{progress['epoch']} epochs, {progress['train_seconds']:.0f} s of training "
            f"({progress['samples_seen'] / max(progress['train_seconds'], 1e-9):.0f} samples/s; "
            f"{progress.get('cpu_seconds', 0.0):.0f} s of process CPU time), best validation "
            f"metric {progress['best_metric']} at epoch {progress['best_epoch']}. Full config and per-epoch "
            "history: `training.json`.",
        ]
    lines += ["", "## Pictures", ""]
    relative = os.path.relpath(out, checkpoint.path)
    lines += [f"![{name}]({relative}/{name})" for name in pictures]
    lines += [
        "",
        "## Limitations",
        "",
        "Trained for one domain; queries far from its captions, and images unlike its training images, "
        "get embeddings of unknown quality. Zero-shot prompts: "
        + ", ".join(f"`{t}`" for t in checkpoint.meta.prompt_templates)
        + ".",
        "",
    ]
    return "\n".join(lines)


def run(
    checkpoint_path: str,
    baseline_path: str | None,
    data_config: DataConfig,
    out: Path | None,
    device: str | None = None,
    text_runtime: str = TextRuntime.TORCH,
    text_cache: Path | None = None,
) -> dict[str, Any]:
    checkpoint = load_checkpoint(checkpoint_path, device=device)
    if data_config.kind == "emoji":
        return run_emoji(checkpoint, baseline_path, data_config, out, device, text_runtime, text_cache)
    runs: list[Evaluated] = []
    report: dict[str, Any] = {}
    if baseline_path:
        baseline, _ = evaluate_checkpoint(
            load_checkpoint(baseline_path, device=device), data_config, text_runtime
        )
        baseline.name = f"baseline: {baseline.name}"
        runs.append(baseline)
        report["baseline"] = baseline.metrics
    trained, data = evaluate_checkpoint(checkpoint, data_config, text_runtime)
    trained.name = f"trained: {trained.name}"
    runs.append(trained)
    report["checkpoint"] = trained.metrics
    out = out or checkpoint.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    pictures = draw(out, runs, data, checkpoint.image_processor)
    report["pictures"] = pictures
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (checkpoint.path / "README.md").write_text(model_card(checkpoint, report, pictures, out))
    return report


def run_emoji(
    checkpoint: LoadedCheckpoint,
    baseline_path: str | None,
    data_config: DataConfig,
    out: Path | None,
    device: str | None,
    text_runtime: str,
    text_cache: Path | None = None,
) -> dict[str, Any]:
    """The emoji report: both models measured on the split the trained checkpoint was trained with."""
    data = load_emoji_eval(data_config, checkpoint.meta.sketch_normalization)
    check_emoji_data(data)
    split = EmojiSplit.of_checkpoint(checkpoint.path, data.concept_ids, data_config)
    checkpoints = [("checkpoint", checkpoint)]
    if baseline_path:
        checkpoints.insert(0, ("baseline", load_checkpoint(baseline_path, device=device)))
    report: dict[str, Any] = {}
    runs: list[tuple[str, np.ndarray, np.ndarray, TextEmbedder]] = []
    for role, loaded in checkpoints:
        embedder = Embedder.from_checkpoint(loaded, text_runtime=text_runtime)
        texts = TextEmbedder(embedder, text_cache)
        emoji, images, labels = emoji_metrics(embedder, loaded, data, split, texts)
        report[role] = {
            "checkpoint": str(loaded.path),
            "fingerprint": loaded.fingerprint,
            "images": len(data.images),
            "text_runtime": embedder.text_runtime.value,
            "skipped": data.problems,
            "emoji": emoji,
        }
        runs.append(
            (f"{role if role == 'baseline' else 'trained'}: {loaded.path.name}", images, labels, texts)
        )
    out = out or checkpoint.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    pictures = draw_emoji(out, runs, data, checkpoint.meta.sketch_normalization)
    report["pictures"] = pictures
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (checkpoint.path / "README.md").write_text(model_card(checkpoint, report, pictures, out))
    return report


def parser(prog: str = "python -m training.evaluate") -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument("checkpoint", help="checkpoint directory (or hub id)")
    parse.add_argument("--baseline", help="a checkpoint to compare with (e.g. the untrained init)")
    source = parse.add_mutually_exclusive_group()
    source.add_argument(
        "--mnist-dir", type=Path, help="MNIST idx files (default: $MNIST_DIR); the test split"
    )
    source.add_argument("--captions", type=Path, help="CSV of image_path,caption[,label]")
    source.add_argument("--image-folder", type=Path, help="folder with one subfolder per class")
    source.add_argument(
        "--emoji-dir", type=Path, help="the emoji collection (default with --emoji: $EMOJI_DIR)"
    )
    parse.add_argument("--emoji", action="store_true", help="evaluate on the emoji collection ($EMOJI_DIR)")
    parse.add_argument(
        "--holdout-fraction",
        type=float,
        help="emoji concepts to treat as unseen (default: what the checkpoint's training record says)",
    )
    parse.add_argument(
        "--trained-styles",
        help="emoji: comma-separated styles the checkpoint was trained on (default: its training record)",
    )
    parse.add_argument(
        "--text-cache",
        type=Path,
        help="emoji: a kept cache of the frozen text tower's outputs (training's text_cache); used only "
        "for a checkpoint whose text tower has the cached weights, the projection runs as served",
    )
    parse.add_argument("--download-mnist", action="store_true")
    parse.add_argument("--limit", type=int, help="evaluate on the first N examples only")
    parse.add_argument("--out", type=Path, help="where metrics.json and PNGs go (default: CHECKPOINT/eval)")
    parse.add_argument("--device", help="auto, cpu, cuda ...")
    parse.add_argument(
        "--text-runtime",
        choices=TEXT_RUNTIME_CHOICES,
        default=TextRuntime.TORCH.value,
        help="embed texts with torch (default) or as the encoder may: onnx, onnx-int8 (clipsearch.onnx_text)",
    )
    return parse


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.evaluate") -> int:
    args = parser(prog).parse_args(argv)
    configure_logging()
    kind: Literal["mnist", "captions", "folders", "emoji"] = (
        "captions" if args.captions else "folders" if args.image_folder else "mnist"
    )
    if args.emoji_dir or args.emoji:
        kind = "emoji"
    try:
        data_config = DataConfig(
            kind=kind,
            emoji_dir=args.emoji_dir,
            holdout_fraction=args.holdout_fraction or 0.0,
            emoji_styles=args.trained_styles.split(",") if args.trained_styles else list(EMOJI_STYLES),
            mnist_dir=args.mnist_dir,
            captions_csv=args.captions,
            image_folder=args.image_folder,
            download=args.download_mnist,
            limit=args.limit,
        )
        report = run(
            args.checkpoint,
            args.baseline,
            data_config,
            args.out,
            args.device,
            args.text_runtime,
            args.text_cache,
        )
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in ("baseline", "checkpoint"):
        if name in report:
            rows = metric_rows(report[name])
            print(f"{name}: " + ", ".join(f"{metric} {_fmt(value)}" for metric, value in rows.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
