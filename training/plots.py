"""Evaluation pictures (matplotlib, Agg): embedding maps, a similarity heatmap, a retrieval grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

MAP_POINTS = 3000


@dataclass
class MapPanel:
    title: str
    image_embeddings: np.ndarray  # (n, dim) unit rows
    labels: np.ndarray  # (n,)
    prompt_embeddings: np.ndarray  # (classes, dim): one marker per class
    class_names: Sequence[str]


def pca_2d(points: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project `points` and `extra` onto the first two principal axes of `points`."""
    mean = points.mean(axis=0)
    _, _, axes = np.linalg.svd(points - mean, full_matrices=False)
    return (points - mean) @ axes[:2].T, (extra - mean) @ axes[:2].T


def embedding_maps(path: Path, panels: Sequence[MapPanel], seed: int = 0) -> None:
    """Side-by-side PCA maps of image embeddings coloured by label, class prompts as stars."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6), squeeze=False)
    colours = plt.get_cmap("tab10" if max(len(p.class_names) for p in panels) <= 10 else "tab20")
    for axis, panel in zip(axes[0], panels, strict=True):
        rng = np.random.default_rng(seed)
        keep = rng.permutation(len(panel.labels))[:MAP_POINTS]
        points, prompts = pca_2d(panel.image_embeddings[keep], panel.prompt_embeddings)
        labels = panel.labels[keep]
        for label, name in enumerate(panel.class_names):
            colour = colours(label % colours.N)
            chosen = labels == label
            axis.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.5, color=colour, label=name)
            axis.scatter(
                prompts[label, 0],
                prompts[label, 1],
                s=260,
                marker="*",
                color=colour,
                edgecolors="black",
                linewidths=1.2,
            )
            axis.annotate(
                name, prompts[label], fontsize=9, fontweight="bold", xytext=(6, 6), textcoords="offset points"
            )
        axis.set_title(f"{panel.title}\n(PCA of test-image embeddings; stars: class prompts)")
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def similarity_heatmap(
    path: Path,
    panels: Sequence[tuple[str, np.ndarray]],
    row_names: Sequence[str],
    column_names: Sequence[str],
) -> None:
    """Cosine similarity of sample images (rows) and texts (columns), one panel per model."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for axis, (title, similarity) in zip(axes[0], panels, strict=True):
        shown = axis.imshow(similarity, cmap="viridis")
        axis.set_xticks(range(len(column_names)), column_names, rotation=60, ha="right", fontsize=8)
        axis.set_yticks(range(len(row_names)), row_names, fontsize=8)
        axis.set_title(title)
        figure.colorbar(shown, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def retrieval_grid(
    path: Path,
    title: str,
    queries: Sequence[str],
    results: np.ndarray,
    images: np.ndarray,
    correct: np.ndarray,
) -> None:
    """One row per text query with its top-k images; wrong results framed in red.

    `images` is (n, H, W, 3) floats in 0..1, `results` (queries, k) indices,
    `correct` (queries, k) booleans.
    """
    rows, k = results.shape
    figure, axes = plt.subplots(rows, k, figsize=(1.3 * k + 2.2, 1.35 * rows), squeeze=False)
    for row, query in enumerate(queries):
        for column in range(k):
            axis = axes[row][column]
            axis.imshow(images[results[row, column]])
            axis.set_xticks([])
            axis.set_yticks([])
            colour = "green" if correct[row, column] else "red"
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
        axes[row][0].set_ylabel(query, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
