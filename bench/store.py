"""Vector store latency and recall: exact numpy search vs qdrant-client local mode vs Qdrant Edge.

    python -m bench.store [--sizes 10000 100000] [--dim 128] [--queries 200] [--ef 64 128]

Data mimics CLIP embeddings of MNIST: 10 clusters (one per `label`), each point its
cluster's centre plus variation along a few cluster-specific directions (embeddings
lie near a low-dimensional manifold) plus isotropic noise; `--intrinsic 0` makes the
variation isotropic only (a harder, less realistic case for graph indexes). Queries
are fresh draws from the same distribution. Filtered queries ask for the query's own
label (~10% of the points). Recall@10 is measured against exact numpy search on the
same filter. Local mode is brute force in Python, so it gets fewer queries
(--local-queries). Prints p50/p99 latency, recall and the ratio of p50 to numpy's; no
assertions. Timings depend on the machine and on anything else running on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.store import IMAGE_VECTOR, Point, VectorStore, open_store
from clipsearch.store.edge import EdgeStore, EdgeTuning

K = 10
LABELS = 10
ALIAS = "bench"


@dataclass(frozen=True)
class Dataset:
    vectors: np.ndarray  # (n, dim) unit rows
    labels: np.ndarray  # (n,)
    queries: np.ndarray  # (q, dim) unit rows
    query_labels: np.ndarray  # (q,)


def clustered(n: int, queries: int, dim: int, intrinsic: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(LABELS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Per cluster: `intrinsic` orthonormal directions with decaying spread.
    bases = [np.linalg.qr(rng.normal(size=(dim, max(intrinsic, 1))))[0].T for _ in range(LABELS)]
    spread = 0.5 / np.sqrt(np.arange(1, max(intrinsic, 1) + 1))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, LABELS, count)
        points = centres[labels].copy()
        if intrinsic > 0:
            coords = rng.normal(size=(count, intrinsic)) * spread
            for label in range(LABELS):
                rows = labels == label
                points[rows] += coords[rows] @ bases[label]
        noise = 0.3 if intrinsic > 0 else 0.9
        points += noise * rng.normal(size=(count, dim)) / np.sqrt(dim)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points.astype(np.float32), labels

    vectors, labels = draw(n)
    query_vectors, query_labels = draw(queries)
    return Dataset(vectors, labels, query_vectors, query_labels)


def point_id(index: int) -> str:
    return str(uuid.UUID(int=index + 1))


def exact_top(data: Dataset, q: int, filtered: bool) -> np.ndarray:
    scores = data.vectors @ data.queries[q]
    if filtered:
        scores = np.where(data.labels == data.query_labels[q], scores, -np.inf)
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


@dataclass
class Row:
    size: int
    backend: str
    filtered: bool
    p50_ms: float
    p99_ms: float
    recall: float
    queries: int


def measure(
    name: str, data: Dataset, filtered: bool, queries: int, search: Callable[[int], Sequence[int]]
) -> Row:
    latencies, recalls = [], []
    for q in range(queries):
        truth = set(exact_top(data, q, filtered).tolist())
        started = time.perf_counter()
        found = search(q)
        latencies.append((time.perf_counter() - started) * 1e3)
        recalls.append(len(truth & set(found)) / K)
    return Row(
        size=len(data.vectors),
        backend=name,
        filtered=filtered,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        recall=float(np.mean(recalls)),
        queries=queries,
    )


def numpy_rows(data: Dataset, queries: int) -> list[Row]:
    def searcher(filtered: bool) -> Callable[[int], list[int]]:
        return lambda q: [int(i) for i in exact_top(data, q, filtered)]

    return [measure("numpy exact", data, filtered, queries, searcher(filtered)) for filtered in (False, True)]


def fill(store: VectorStore, data: Dataset, batch: int = 2048) -> str:
    name = store.create_version(
        ALIAS, dim=data.vectors.shape[1], fingerprint="bench", vector_names=[IMAGE_VECTOR], source="bench"
    )
    for start in range(0, len(data.vectors), batch):
        stop = min(start + batch, len(data.vectors))
        store.upsert(
            name,
            [
                Point(
                    id=point_id(i),
                    vectors={IMAGE_VECTOR: data.vectors[i]},
                    payload={"label": int(data.labels[i])},
                )
                for i in range(start, stop)
            ],
        )
    store.finish_version(ALIAS, name, keep=1)
    return name


def store_rows(name: str, store: VectorStore, data: Dataset, queries: int) -> list[Row]:
    def searcher(filtered: bool) -> Callable[[int], list[int]]:
        def search(q: int) -> list[int]:
            where: dict[str, Any] | None = {"label": int(data.query_labels[q])} if filtered else None
            hits = store.search(ALIAS, data.queries[q], k=K, filter=where)
            return [uuid.UUID(hit.id).int - 1 for hit in hits]

        return search

    for q in range(min(5, queries)):  # warm caches and lazily loaded files
        searcher(False)(q)
    return [measure(name, data, filtered, queries, searcher(filtered)) for filtered in (False, True)]


def print_table(rows: list[Row]) -> None:
    baseline = {(r.size, r.filtered): r.p50_ms for r in rows if r.backend == "numpy exact"}
    print(
        f"{'points':>8} {'backend':<22} {'filter':<7} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9} "
        f"{'p50 / numpy':>11} {'queries':>7}"
    )
    for r in rows:
        ratio = r.p50_ms / baseline[(r.size, r.filtered)]
        print(
            f"{r.size:>8} {r.backend:<22} {'label' if r.filtered else '-':<7} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {r.recall:>9.4f} {ratio:>10.2f}x {r.queries:>7}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--intrinsic", type=int, default=16, help="directions of variation per cluster (0: isotropic)"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-queries", type=int, default=20, help="queries for local mode (brute force)")
    parser.add_argument("--skip-local", action="store_true")
    defaults = EdgeTuning()
    parser.add_argument("--m", type=int, default=defaults.m)
    parser.add_argument("--ef-construct", type=int, default=defaults.ef_construct)
    parser.add_argument(
        "--ef", type=int, nargs="+", default=[defaults.hnsw_ef], help="search ef values to try"
    )
    args = parser.parse_args(argv)

    rows: list[Row] = []
    for size in args.sizes:
        data = clustered(size, args.queries, args.dim, args.intrinsic)
        rows += numpy_rows(data, args.queries)
        with tempfile.TemporaryDirectory() as root:
            tuning = dataclasses.replace(defaults, m=args.m, ef_construct=args.ef_construct)
            edge = EdgeStore(Path(root) / "edge", tuning=tuning)
            started = time.perf_counter()
            fill(edge, data)
            print(
                f"edge: {size} points indexed in {time.perf_counter() - started:.1f}s "
                f"(m={args.m}, ef_construct={args.ef_construct})",
                flush=True,
            )
            for ef in args.ef:
                edge.tuning = dataclasses.replace(tuning, hnsw_ef=ef)
                rows += store_rows(f"edge (ef={ef})", edge, data, args.queries)
            edge.close()
            if not args.skip_local:
                local = open_store(None, Path(root) / "local", backend="local")
                started = time.perf_counter()
                fill(local, data)
                print(f"local mode: {size} points loaded in {time.perf_counter() - started:.1f}s", flush=True)
                rows += store_rows("qdrant-client local", local, data, min(args.local_queries, args.queries))
                local.close()
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
