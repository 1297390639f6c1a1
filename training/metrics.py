"""Retrieval and zero-shot metrics on unit-norm embeddings (numpy in, floats out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipsearch.embedder import Embedder

QUERY_CHUNK = 1024


def class_prompts(class_name: str, label: int, templates: Sequence[str], numerals: bool) -> list[str]:
    """A class's zero-shot prompts: every template with its name (and its numeral, for digits)."""
    names = [class_name, str(label)] if numerals else [class_name]
    return [template.format(name) for template in templates for name in names]


def class_prototypes(
    embedder: Embedder, class_names: Sequence[str], templates: Sequence[str], numerals: bool
) -> np.ndarray:
    """(classes, dim) unit rows: each class's prompt embeddings averaged (a prompt ensemble)."""
    rows = []
    for label, name in enumerate(class_names):
        embeddings = embedder.embed_texts(class_prompts(name, label, templates, numerals))
        mean = embeddings.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(rows).astype(np.float32)


def zero_shot_accuracy(image_embeddings: np.ndarray, labels: np.ndarray, prototypes: np.ndarray) -> float:
    predictions = (image_embeddings @ prototypes.T).argmax(axis=1)
    return float((predictions == labels).mean())


def top_k(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """(queries, k) indices of the most similar items, best first."""
    k = min(k, items.shape[0])
    item_tensor = torch.from_numpy(items)
    chunks = [
        torch.topk(torch.from_numpy(queries[start : start + QUERY_CHUNK]) @ item_tensor.T, k, dim=1).indices
        for start in range(0, queries.shape[0], QUERY_CHUNK)
    ]
    return torch.cat(chunks).numpy()


def recall_at_k(
    queries: np.ndarray, items: np.ndarray, query_keys: np.ndarray, item_keys: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """Share of queries with a relevant item (same key) among their top k, for each k."""
    ranked = item_keys[top_k(queries, items, max(ks))]
    hits = ranked == query_keys[:, None]
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def precision_at_k(
    queries: np.ndarray, items: np.ndarray, query_keys: np.ndarray, item_keys: np.ndarray, k: int
) -> np.ndarray:
    """Per query: the share of its top k items that are relevant (same key)."""
    ranked = item_keys[top_k(queries, items, k)]
    return (ranked == query_keys[:, None]).mean(axis=1)
