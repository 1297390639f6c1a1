"""Vector store at scale: build time, memory, disk, latency and recall of Qdrant Edge, against exact
numpy search (and qdrant-client local mode at small sizes).

    python -m bench.store [--data clustered|mnist-augmented] [--sizes 10000 100000] [--queries 200]
                          [--clients 1 8] [--tuning default|sized] [--m 16] [--ef-construct 128]
                          [--ef 64 128] [--oversampling 1 2] [--quantization int8] [--vectors-memory cold]
                          [--segments 1] [--full-scan-kb 40000] [--skip-local]

Data:
  clustered        10 clusters (one per `label`), each point its centre plus variation along a few
                   cluster-specific directions plus isotropic noise (`--intrinsic 0`: isotropic only);
                   queries are fresh draws.
  mnist-augmented  the served model's embeddings of augmented MNIST images (bench/augmented.py,
                   cached under var/bench/embeddings; the first run embeds them through the encoder):
                   the distribution of real embeddings. Two query sets: other warps of MNIST digits
                   (image queries) and 200 typed descriptions of digits (text queries, embedded by the
                   text tower: they lie in another region of the space than the images).

Each Edge configuration is built in a child process and searched in another (as an indexer builds
and a gateway serves), so their resident memory is the store's alone: the build's peak and the
serving process's after its searches, beside the size of the store on disk. Searches run with 1 and
with 8 client threads in the serving process. Filtered queries ask for the query's own label (~10%
of the points). Recall@10 is measured against exact numpy search with the same filter (cached under
var/bench/truth). Prints a table; no assertions. Timings depend on the machine and on anything else
running on it: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.augmented import CHUNK, Embedded, cached_embeddings, ensure_embeddings, text_queries
from clipsearch.processes import cpu_seconds
from clipsearch.store import IMAGE_VECTOR, Point, VectorStore, open_store
from clipsearch.store.edge import EdgeStore, EdgeTuning

K = 10
LABELS = 10
ALIAS = "bench"
TRUTH = Path("var/bench/truth")
NUMPY_QUERIES = 20  # exact search is the baseline of the ratio: a few queries give its p50


@dataclass(frozen=True)
class QuerySet:
    name: str  # "image", "text", "clustered"
    vectors: np.ndarray  # (q, dim) unit rows
    labels: np.ndarray  # (q,)


@dataclass(frozen=True)
class Dataset:
    kind: str
    embedded: Embedded  # the points, in chunk files (read without mmap)
    labels: np.ndarray  # (n,) int8
    queries: list[QuerySet]
    key: str  # names the data for the ground-truth cache


# --- data ------------------------------------------------------------------------------------


def clustered(n: int, queries: int, dim: int, intrinsic: int, directory: Path, seed: int = 0) -> Dataset:
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
        return points.astype(np.float32), labels.astype(np.int8)

    files, all_labels = [], []
    for number, start in enumerate(range(0, n, CHUNK)):
        vectors, labels = draw(min(CHUNK, n - start))
        path = directory / f"chunk-{number:04d}.npy"
        np.save(path, vectors)
        files.append(path)
        all_labels.append(labels)
    query_vectors, query_labels = draw(queries)
    return Dataset(
        kind="clustered",
        embedded=Embedded(directory, files, n, dim),
        labels=np.concatenate(all_labels),
        queries=[QuerySet("clustered", query_vectors, query_labels)],
        key=f"clustered-d{dim}-i{intrinsic}-s{seed}-n{n}-q{queries}",
    )


def mnist_augmented(n: int, queries: int, args: argparse.Namespace) -> Dataset:
    if args.embeddings:
        embedded = cached_embeddings(args.embeddings, n)
    else:
        if args.mnist_dir is None:
            raise SystemExit("set MNIST_DIR or pass --mnist-dir (or --embeddings DIR)")
        embedded = ensure_embeddings(n, checkpoint=args.checkpoint, mnist_dir=args.mnist_dir)
    mnist_labels = np.load(embedded.directory / "labels.npy")
    labels = mnist_labels[np.arange(n) % len(mnist_labels)]
    image_queries = np.load(embedded.directory / "image-queries.npy")[:queries]
    texts = text_queries()[:queries]
    return Dataset(
        kind="mnist-augmented",
        embedded=embedded,
        labels=labels.astype(np.int8),
        queries=[
            QuerySet("image", image_queries, mnist_labels[np.arange(len(image_queries)) % len(mnist_labels)]),
            QuerySet(
                "text",
                np.load(embedded.directory / "texts.npy")[: len(texts)],
                np.array([lb for _, lb in texts]),
            ),
        ],
        key=f"{embedded.directory.name}-n{n}-q{queries}",
    )


def ground_truth(data: Dataset, queries: QuerySet, filtered: bool) -> np.ndarray:
    """Exact top-K ids for each query (the query's label as filter when `filtered`), cached."""
    path = TRUTH / f"{data.key}-{queries.name}-{'label' if filtered else 'all'}.npy"
    if path.exists():
        return np.load(path)
    best_scores = np.full((len(queries.vectors), K), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries.vectors), K), dtype=np.int64)
    for start in range(0, data.embedded.count, CHUNK):
        stop = min(start + CHUNK, data.embedded.count)
        scores = queries.vectors @ data.embedded.read(start, stop).T  # (q, rows)
        if filtered:
            scores[data.labels[start:stop][None, :] != queries.labels[:, None]] = -np.inf
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, stop), (len(scores), stop - start))], axis=1
        )
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, best_ids)
    return best_ids


def recall(truth: np.ndarray, found: Sequence[Sequence[int]]) -> float:
    return float(np.mean([len(set(t.tolist()) & set(f)) / K for t, f in zip(truth, found, strict=True)]))


# --- rows ------------------------------------------------------------------------------------


@dataclass
class Row:
    size: int
    backend: str
    queries: str
    filtered: bool
    clients: int
    p50_ms: float
    p99_ms: float
    per_s: float
    recall: float
    count: int


@dataclass
class Build:
    size: int
    backend: str
    load_s: float  # upserts
    index_s: float  # publishing: HNSW graphs, quantization, segment merges
    cpu_s: float  # CPU seconds of the whole build (every thread)
    load_peak_mb: float  # the building process's peak by the end of the upserts
    peak_rss_mb: float  # ... and by the end of the build
    serve_rss_mb: float  # a fresh process that opened the store and searched
    serve_anon_mb: float
    disk_mb: float


def point_id(index: int) -> str:
    return str(uuid.UUID(int=index + 1))


def payload(index: int, label: int) -> dict[str, Any]:
    """What the indexer writes with each point (services/indexer/job.py), so payload storage and
    its indexes weigh what they weigh in a deployment."""
    return {
        "label": label,
        "class_name": str(label),
        "split": "augmented",
        "source": "mnist",
        "relative_path": f"augmented/{index}",
        "media_key": f"{index:064x}",
        "model_fingerprint": "f" * 64,
    }


def numpy_rows(data: Dataset, n: int) -> list[Row]:
    """Exact search over the vectors in memory: the baseline."""
    vectors = data.embedded.read(0, n)
    rows = []
    for queries in data.queries:
        for filtered in (False, True):
            latencies = []
            for q in range(min(NUMPY_QUERIES, len(queries.vectors))):
                started = time.perf_counter()
                scores = vectors @ queries.vectors[q]
                if filtered:
                    scores = np.where(data.labels[:n] == queries.labels[q], scores, -np.inf)
                top = np.argpartition(-scores, K)[:K]
                top[np.argsort(-scores[top])]
                latencies.append((time.perf_counter() - started) * 1e3)
            rows.append(
                Row(
                    n,
                    "numpy exact",
                    queries.name,
                    filtered,
                    1,
                    *_percentiles(latencies),
                    0,
                    1.0,
                    len(latencies),
                )
            )
    return rows


def _percentiles(latencies: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


# --- child processes: build, serve -----------------------------------------------------------


def _status_kib(pid: int | str = "self") -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def _disk_bytes(root: Path) -> int:
    """Allocated bytes (du), not apparent sizes: the WAL's files are preallocated and sparse."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    embedded = Embedded(Path(spec["directory"]), [Path(f) for f in spec["files"]], spec["count"], spec["dim"])
    labels = np.load(spec["labels"])
    store = EdgeStore(spec["root"], tuning=EdgeTuning(**spec["tuning"]))
    started, started_cpu = time.perf_counter(), cpu_seconds()
    name = store.create_version(
        ALIAS, dim=embedded.dim, fingerprint="bench", vector_names=[IMAGE_VECTOR], source="bench"
    )
    for start in range(0, embedded.count, 1024):  # batches of the indexer's order of size
        stop = min(start + 1024, embedded.count)
        vectors = embedded.read(start, stop)
        store.upsert(
            name,
            [
                Point(
                    id=point_id(i),
                    vectors={IMAGE_VECTOR: vectors[i - start]},
                    payload=payload(i, int(labels[i])),
                )
                for i in range(start, stop)
            ],
        )
    loaded, loaded_cpu, loaded_peak = time.perf_counter(), cpu_seconds(), _status_kib()["VmHWM"]
    store.finish_version(ALIAS, name, keep=1)
    indexed = time.perf_counter()
    store.close()
    return {
        "load_s": loaded - started,
        "index_s": indexed - loaded,
        "load_cpu_s": loaded_cpu - started_cpu,
        "index_cpu_s": cpu_seconds() - loaded_cpu,
        "load_peak_kib": loaded_peak,
        "peak_rss_kib": _status_kib()["VmHWM"],
        "disk_bytes": _disk_bytes(Path(spec["root"])),
    }


def child_serve(spec: dict[str, Any]) -> dict[str, Any]:
    tuning = EdgeTuning(**spec["tuning"])
    store = EdgeStore(spec["root"], tuning=tuning)
    query_sets = {name: (np.load(path), np.load(labels)) for name, (path, labels) in spec["queries"].items()}
    # Warm up as a serving process is after a while: the store's files in the page cache (what
    # searches read from disk, vectors kept "cold" included), lazily loaded parts touched.
    for path in Path(spec["root"]).rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                while file.read(1 << 24):
                    pass
    for vectors, _ in query_sets.values():
        for q in range(min(20, len(vectors))):
            store.search(ALIAS, vectors[q], k=K)
    results: list[dict[str, Any]] = []
    for search in spec["searches"]:  # search-time settings: ef, oversampling
        store.tuning = dataclasses.replace(tuning, **search)
        for name, (vectors, labels) in query_sets.items():
            for filtered in (False, True):
                for clients in spec["clients"]:
                    latencies, found, seconds = _run_queries(store, vectors, labels, filtered, clients)
                    results.append(
                        {
                            "search": search,
                            "queries": name,
                            "filtered": filtered,
                            "clients": clients,
                            "latencies_ms": latencies,
                            "found": found,
                            "seconds": seconds,
                        }
                    )
    status = _status_kib()
    store.close()
    return {"results": results, "rss_kib": status["VmRSS"], "anon_kib": status["RssAnon"]}


def _run_queries(
    store: VectorStore, vectors: np.ndarray, labels: np.ndarray, filtered: bool, clients: int
) -> tuple[list[float], list[list[int]], float]:
    latencies: list[float] = [0.0] * len(vectors)
    found: list[list[int]] = [[] for _ in range(len(vectors))]
    counter = iter(range(len(vectors)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                q = next(counter, None)
            if q is None:
                return
            where = {"label": int(labels[q])} if filtered else None
            started = time.perf_counter()
            hits = store.search(ALIAS, vectors[q], k=K, filter=where)
            latencies[q] = (time.perf_counter() - started) * 1e3
            found[q] = [uuid.UUID(hit.id).int - 1 for hit in hits]

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, found, time.perf_counter() - started


def _child(command: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path, out_path = work / f"{command}.json", work / f"{command}.out.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "bench.store", "--child", command, str(spec_path), str(out_path)]
    )
    if done.returncode != 0:
        raise SystemExit(f"the {command} process failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def edge_rows(
    data: Dataset,
    n: int,
    tuning: EdgeTuning,
    searches: list[dict[str, Any]],
    clients: list[int],
    work: Path,
    label: str,
) -> tuple[Build, list[Row]]:
    root = work / "edge"
    labels_path = work / "labels.npy"
    np.save(labels_path, data.labels[:n])
    common = {"root": str(root), "tuning": dataclasses.asdict(tuning)}
    built = _child(
        "build",
        {
            **common,
            "directory": str(data.embedded.directory),
            "files": [str(f) for f in data.embedded.files],
            "count": n,
            "dim": data.embedded.dim,
            "labels": str(labels_path),
        },
        work,
    )
    print(
        f"{label}: {n} points loaded in {built['load_s']:.0f} s, indexed in {built['index_s']:.0f} s, "
        f"{built['load_cpu_s'] + built['index_cpu_s']:.0f} CPU s (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    query_files = {}
    for queries in data.queries:
        vectors_path, labels_path = work / f"q-{queries.name}.npy", work / f"ql-{queries.name}.npy"
        np.save(vectors_path, queries.vectors)
        np.save(labels_path, queries.labels)
        query_files[queries.name] = (str(vectors_path), str(labels_path))
    served = _child(
        "serve", {**common, "queries": query_files, "searches": searches, "clients": clients}, work
    )
    rows = []
    sets = {queries.name: queries for queries in data.queries}
    for result in served["results"]:
        truth = ground_truth(data, sets[result["queries"]], result["filtered"])
        described = ", ".join(f"{key}={value}" for key, value in result["search"].items())
        rows.append(
            Row(
                n,
                f"{label} {described}".strip(),
                result["queries"],
                result["filtered"],
                result["clients"],
                *_percentiles(result["latencies_ms"]),
                len(result["found"]) / result["seconds"],
                recall(truth, result["found"]),
                len(result["found"]),
            )
        )
    build = Build(
        n,
        label,
        built["load_s"],
        built["index_s"],
        built["load_cpu_s"] + built["index_cpu_s"],
        built["load_peak_kib"] / 1024,
        built["peak_rss_kib"] / 1024,
        served["rss_kib"] / 1024,
        served["anon_kib"] / 1024,
        built["disk_bytes"] / 2**20,
    )
    return build, rows


def local_rows(data: Dataset, n: int, queries: int, work: Path) -> list[Row]:
    """qdrant-client local mode: brute force in Python, so few queries and small sizes only."""
    local = open_store(None, work / "local", backend="local")
    name = local.create_version(
        ALIAS, dim=data.embedded.dim, fingerprint="bench", vector_names=[IMAGE_VECTOR], source="bench"
    )
    vectors = data.embedded.read(0, n)
    for start in range(0, n, 2048):
        local.upsert(
            name,
            [
                Point(
                    id=point_id(i), vectors={IMAGE_VECTOR: vectors[i]}, payload={"label": int(data.labels[i])}
                )
                for i in range(start, min(start + 2048, n))
            ],
        )
    local.finish_version(ALIAS, name, keep=1)
    rows = []
    for query_set in data.queries:
        for filtered in (False, True):
            truth = ground_truth(data, query_set, filtered)[:queries]
            latencies, found, seconds = _run_queries(
                local, query_set.vectors[:queries], query_set.labels, filtered, 1
            )
            rows.append(
                Row(
                    n,
                    "qdrant-client local",
                    query_set.name,
                    filtered,
                    1,
                    *_percentiles(latencies),
                    len(found) / seconds,
                    recall(truth, found),
                    len(found),
                )
            )
    local.close()
    return rows


# --- output ----------------------------------------------------------------------------------


def print_builds(builds: list[Build]) -> None:
    print(
        f"{'points':>8} {'configuration':<40} {'load s':>6} {'index s':>7} {'build s':>7} {'CPU s':>6} "
        f"{'peak RSS MB (load)':>18} {'serve RSS MB':>12} {'(anon)':>6} {'disk MB':>7}"
    )
    for b in builds:
        print(
            f"{b.size:>8} {b.backend:<40} {b.load_s:>6.0f} {b.index_s:>7.0f} {b.load_s + b.index_s:>7.0f} "
            f"{b.cpu_s:>6.0f} {b.peak_rss_mb:>11.0f} ({b.load_peak_mb:>4.0f}) {b.serve_rss_mb:>12.0f} "
            f"{b.serve_anon_mb:>6.0f} {b.disk_mb:>7.0f}"
        )


def print_table(rows: list[Row]) -> None:
    baseline = {(r.size, r.queries, r.filtered): r.p50_ms for r in rows if r.backend == "numpy exact"}
    print(
        f"{'points':>8} {'backend':<52} {'queries':<9} {'filter':<6} {'clients':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'per s':>7} {'recall@10':>9} {'p50/numpy':>9}"
    )
    for r in rows:
        ratio = (
            r.p50_ms / baseline[(r.size, r.queries, r.filtered)]
            if (r.size, r.queries, r.filtered) in baseline
            else float("nan")
        )
        print(
            f"{r.size:>8} {r.backend:<52} {r.queries:<9} {'label' if r.filtered else '-':<6} {r.clients:>7} "
            f"{r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.per_s:>7.0f} {r.recall:>9.4f} {ratio:>8.3f}x"
        )


# --- main ------------------------------------------------------------------------------------


def tuning_for(args: argparse.Namespace, size: int) -> EdgeTuning:
    base = EdgeTuning.for_size(size) if args.tuning == "sized" else EdgeTuning()
    changes: dict[str, Any] = {}
    for field, value in (
        ("m", args.m),
        ("ef_construct", args.ef_construct),
        ("quantization", args.quantization),
        ("vectors_memory", args.vectors_memory),
        ("default_segment_number", args.segments),
        ("segment_points", args.segment_points),
        ("max_search_threads", args.search_threads),
        ("quantile", args.quantile),
        ("full_scan_threshold_kb", args.full_scan_kb),
        ("indexing_threshold_kb", args.indexing_threshold_kb),
        ("max_indexing_threads", args.indexing_threads),
    ):
        if value is not None:
            changes[field] = None if value == "none" else value
    return dataclasses.replace(base, **changes)


def searches_for(args: argparse.Namespace, tuning: EdgeTuning) -> list[dict[str, Any]]:
    efs = args.ef or [tuning.hnsw_ef]
    oversamplings = args.oversampling or [tuning.oversampling]
    return [
        {"hnsw_ef": ef, **({"oversampling": o} if tuning.quantization else {})}
        for ef in efs
        for o in (oversamplings if tuning.quantization else [None])
    ]


def describe_tuning(tuning: EdgeTuning) -> str:
    parts = [f"m={tuning.m}", f"efc={tuning.ef_construct}"]
    if tuning.quantization:
        parts.append(tuning.quantization + (f" q{tuning.quantile}" if tuning.quantile else ""))
    if tuning.vectors_memory:
        parts.append(f"vectors {tuning.vectors_memory}")
    if tuning.default_segment_number != 1:
        parts.append(f"{tuning.default_segment_number} seg")
    if tuning.segment_points:
        parts.append(f"seg {tuning.segment_points // 1000}k")
    if tuning.max_search_threads != 1:
        parts.append(f"{tuning.max_search_threads} threads")
    if tuning.full_scan_threshold_kb != EdgeTuning().full_scan_threshold_kb:
        parts.append(f"fullscan {tuning.full_scan_threshold_kb}kb")
    return "edge " + " ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    from bench.stack import TRAINED

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        command, spec_path, out_path = argv[1:4]
        spec = json.loads(Path(spec_path).read_text())
        run: Callable[[dict[str, Any]], dict[str, Any]] = child_build if command == "build" else child_serve
        Path(out_path).write_text(json.dumps(run(spec)))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=["clustered", "mnist-augmented"], default="clustered")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=128, help="clustered data only")
    parser.add_argument(
        "--intrinsic", type=int, default=16, help="clustered: directions of variation per cluster"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--local-queries", type=int, default=20, help="queries for local mode (brute force)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=TRAINED, help="mnist-augmented: the model")
    parser.add_argument("--mnist-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--embeddings", type=Path, help="mnist-augmented: a filled cache directory")
    parser.add_argument(
        "--tuning",
        choices=["default", "sized"],
        default="sized",
        help="EdgeTuning() or EdgeTuning.for_size(n)",
    )
    parser.add_argument("--m", type=int)
    parser.add_argument("--ef-construct", type=int)
    parser.add_argument("--ef", type=int, nargs="+", help="search ef values to try")
    parser.add_argument("--oversampling", type=float, nargs="+", help="quantized: oversampling values to try")
    parser.add_argument("--quantization", choices=["int8", "none"])
    parser.add_argument("--vectors-memory", choices=["cold", "cached", "none"])
    parser.add_argument("--segments", type=int, help="default_segment_number")
    parser.add_argument("--segment-points", type=int, help="index in segments of this many points")
    parser.add_argument("--search-threads", type=int)
    parser.add_argument("--quantile", type=float)
    parser.add_argument("--full-scan-kb", type=int)
    parser.add_argument("--indexing-threshold-kb", type=int)
    parser.add_argument("--indexing-threads", type=int)
    args = parser.parse_args(argv)

    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    rows: list[Row] = []
    builds: list[Build] = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
            work = Path(scratch)
            if args.data == "clustered":
                (work / "data").mkdir()
                data = clustered(size, args.queries, args.dim, args.intrinsic, work / "data")
            else:
                data = mnist_augmented(size, args.queries, args)
            rows += numpy_rows(data, size)
            tuning = tuning_for(args, size)
            build, measured = edge_rows(
                data, size, tuning, searches_for(args, tuning), args.clients, work, describe_tuning(tuning)
            )
            builds.append(build)
            rows += measured
            if not args.skip_local:
                rows += local_rows(data, size, args.local_queries, work)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print_builds(builds)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
