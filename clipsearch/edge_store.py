"""`EdgeStore`: the embedded vector store on Qdrant Edge (Qdrant's engine, in process).

Layout under the root directory:

    root/.lock                     fcntl lock: one process owns the store at a time
    root/manifest.json             aliases -> live version, per-version metadata (atomic rewrite)
    root/collections/<version>/    one Edge shard per physical collection (WAL + segments)

Unlike qdrant-client's local mode (brute force in Python), Edge builds HNSW and payload
indexes, so search stays in the sub-millisecond range at 100k points.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from clipsearch.store import (
    FILTERABLE_FIELDS,
    IMAGE_VECTOR,
    CollectionInfo,
    Point,
    SearchHit,
    StoreError,
    StoreUnavailable,
    validate_filter,
    versions_prefix,
)

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".edge.lock"  # not ".lock": that is qdrant-client local mode's lock file
COLLECTIONS_DIR = "collections"
_UPSERT_BATCH = 1024
# Manifest entries reported in CollectionInfo.extra (as QdrantStore reports them).
_EXTRA_KEYS = ("source", "created_at", "finished_at")
_SCROLL_PAGE = 10_000


@dataclass(frozen=True)
class EdgeTuning:
    """HNSW and optimiser settings (measured with bench/store.py)."""

    m: int = 16
    ef_construct: int = 128
    hnsw_ef: int = 128  # search-time beam width
    # Up to this size (KB of vectors, per segment) a collection is searched exactly and gets no HNSW
    # graph. A full scan of 40 MB (78k vectors of 128 dims) takes ~2-3 ms a query at recall 1.0,
    # while building the graph for MNIST's 70k took 14 s, a fifth of the whole indexing job
    # (bench/indexer.py); larger collections get the graph, as Qdrant's own threshold gives them.
    full_scan_threshold_kb: int = 40_000
    # Extra graph links per indexed payload value, so filtered searches stay on the graph.
    payload_m: int = 16
    # Few, large segments: one graph walk per query instead of many small ones.
    default_segment_number: int = 1
    indexing_threshold_kb: int = 40_000
    max_segment_size_kb: int | None = None  # None: Edge's default
    max_indexing_threads: int = 0  # 0: as many as there are cores
    # One thread per query: a query walks one graph or scans one segment, and a gateway answers many
    # queries at once; more threads only help with many segments and idle cores (an exact search of
    # 10k vectors: 0.28 ms on one thread, 0.36 ms wall and 0.52 ms CPU on two).
    max_search_threads: int | None = 1

    def edge_config(self, dim: int, vector_names: Sequence[str]) -> qe.EdgeConfig:
        hnsw = qe.HnswIndexConfig(
            m=self.m,
            ef_construct=self.ef_construct,
            full_scan_threshold=self.full_scan_threshold_kb,
            max_indexing_threads=self.max_indexing_threads,
            payload_m=self.payload_m,
        )
        optimizers = qe.EdgeOptimizersConfig(
            default_segment_number=self.default_segment_number,
            indexing_threshold=self.indexing_threshold_kb,
            max_segment_size=self.max_segment_size_kb,
        )
        vectors = {name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine) for name in vector_names}
        return qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=hnsw,
            optimizers=optimizers,
            max_search_threads=self.max_search_threads,
        )


def _payload_schema(kind: type) -> qe.PayloadSchemaType:
    return qe.PayloadSchemaType.Integer if kind is int else qe.PayloadSchemaType.Keyword


def edge_filter(spec: dict[str, Any] | None) -> qe.Filter | None:
    """A validated user filter ({"label": 7}, {"label": [1, 7]}) as an Edge filter (fields ANDed)."""
    if not validate_filter(spec):
        return None
    assert spec is not None
    conditions: list[Any] = []
    for key, value in spec.items():
        kind = FILTERABLE_FIELDS[key]
        values = [int(v) if kind is int else v for v in (value if isinstance(value, list) else [value])]
        match: Any = qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(values)
        conditions.append(qe.FieldCondition(key=key, match=match))
    return qe.Filter(must=conditions)


def _as_list(vector: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(vector, dtype=np.float32).reshape(-1)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EdgeStore:
    """`VectorStore` on Qdrant Edge shards under one root directory, owned by one process."""

    # Sub-millisecond to a few ms per search, GIL held throughout (see VectorStore.in_process).
    in_process = True

    def __init__(self, root: str | os.PathLike[str], *, tuning: EdgeTuning | None = None) -> None:
        self.root = Path(root)
        self.tuning = tuning or EdgeTuning()
        self._guard = threading.RLock()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._closed = False
        try:
            (self.root / COLLECTIONS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the store directory {self.root}: {exc}") from exc
        self._lock_file = self._acquire_lock()
        self._manifest = self._read_manifest()
        self._remove_orphans()

    # --- lifecycle -------------------------------------------------------------------------

    def _acquire_lock(self) -> IO[str]:
        handle = open(self.root / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StoreUnavailable(
                f"the embedded vector store at {self.root} is in use by another process (for example the "
                "gateway). The embedded store allows one process at a time: run the indexer before "
                "starting the gateway, or point both at a Qdrant server URL."
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            for shard in self._shards.values():
                with contextlib.suppress(Exception):
                    shard.flush()
                shard.close()
            self._shards.clear()
            self._closed = True
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ping(self) -> None:
        if self._closed:
            raise StoreUnavailable("the embedded store is closed")
        if not (self.root / COLLECTIONS_DIR).is_dir():
            raise StoreUnavailable(f"the embedded store directory {self.root} is gone")

    # --- manifest --------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST_NAME
        if not path.exists():
            return {"aliases": {}, "versions": {}}
        try:
            manifest: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"the store manifest {path} is unreadable: {exc}") from exc
        return manifest

    def _write_manifest(self) -> None:
        """Write-to-temp, fsync, rename: readers of the file see the old or the new manifest, whole."""
        path = self.root / MANIFEST_NAME
        temp = path.with_name(f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp")
        with open(temp, "w") as handle:
            json.dump(self._manifest, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(self.root)

    def _remove_orphans(self) -> None:
        """Shard directories the manifest does not name: left by a crash mid-create or mid-drop."""
        for entry in (self.root / COLLECTIONS_DIR).iterdir():
            if entry.name not in self._manifest["versions"]:
                shutil.rmtree(entry, ignore_errors=True)
        for temp in self.root.glob(f".{MANIFEST_NAME}.*.tmp"):
            temp.unlink(missing_ok=True)

    def _meta(self, collection: str) -> dict[str, Any]:
        meta: dict[str, Any] | None = self._manifest["versions"].get(collection)
        if meta is None:
            raise StoreError(f"collection {collection!r} does not exist")
        return meta

    def _resolve(self, name_or_alias: str) -> str | None:
        live: str | None = self._manifest["aliases"].get(name_or_alias)
        if live is not None:
            return live
        return name_or_alias if name_or_alias in self._manifest["versions"] else None

    def _shard(self, collection: str) -> qe.EdgeShard:
        self.ping()
        with self._guard:
            shard = self._shards.get(collection)
            if shard is None:
                self._meta(collection)
                try:
                    shard = qe.EdgeShard.load(str(self.root / COLLECTIONS_DIR / collection))
                except Exception as exc:  # Edge raises bare Exception
                    raise StoreUnavailable(f"cannot open collection {collection!r}: {exc}") from exc
                self._shards[collection] = shard
            return shard

    # --- read side -------------------------------------------------------------------------

    def collection_info(self, name_or_alias: str) -> CollectionInfo | None:
        with self._guard:
            name = self._resolve(name_or_alias)
            if name is None:
                return None
            meta = dict(self._meta(name))
            alias = next((a for a, live in self._manifest["aliases"].items() if live == name), None)
        return CollectionInfo(
            name=name,
            alias=alias,
            fingerprint=meta["fingerprint"],
            dim=int(meta["dim"]),
            vector_names=sorted(meta["vector_names"]),
            count=self.count(name),
            complete=bool(meta["complete"]),
            extra={key: meta[key] for key in _EXTRA_KEYS if key in meta},
        )

    def search(
        self,
        name_or_alias: str,
        vector: np.ndarray,
        *,
        using: str = IMAGE_VECTOR,
        k: int = 10,
        offset: int = 0,
        filter: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        condition = edge_filter(filter)
        with self._guard:
            name = self._resolve(name_or_alias)
            if name is None:
                raise StoreError(f"collection {name_or_alias!r} does not exist")
            meta = self._meta(name)
        if using not in meta["vector_names"]:
            raise StoreError(
                f"collection {name!r} has no {using!r} vectors (has: {', '.join(meta['vector_names'])})"
            )
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != int(meta["dim"]):
            raise StoreError(
                f"query vector has {query.shape[0]} dimensions; collection {name!r} has {meta['dim']}"
            )
        if k <= 0:
            return []
        request = qe.QueryRequest(
            limit=k,
            offset=max(offset, 0),
            query=qe.Query.Nearest(_as_list(query), using=using),
            filter=condition,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=max(self.tuning.hnsw_ef, k + offset)),
        )
        try:
            found = self._shard(name).query(request)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"search in {name!r} failed: {exc}") from exc
        return [SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in found]

    # --- write side ------------------------------------------------------------------------

    def create_version(
        self, alias: str, *, dim: int, fingerprint: str, vector_names: Sequence[str], source: str
    ) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", alias) or "__v" in alias:
            raise StoreError(f"collection name {alias!r} must be letters, digits, '_', '-' or '.' (no '__v')")
        if dim <= 0 or not vector_names:
            raise StoreError("a collection needs a positive dimension and at least one vector name")
        self.ping()
        with self._guard:
            number = time.time_ns() // 1000  # microseconds: sorts by creation time (as QdrantStore)
            while f"{versions_prefix(alias)}{number}" in self._manifest["versions"]:
                number += 1
            name = f"{versions_prefix(alias)}{number}"
            path = self.root / COLLECTIONS_DIR / name
            try:
                shard = qe.EdgeShard.create(str(path), self.tuning.edge_config(dim, vector_names))
                for field_name, kind in FILTERABLE_FIELDS.items():
                    shard.update(qe.UpdateOperation.create_field_index(field_name, _payload_schema(kind)))
                shard.flush()
            except Exception as exc:
                shutil.rmtree(path, ignore_errors=True)
                raise StoreError(f"cannot create collection {name!r}: {exc}") from exc
            self._shards[name] = shard
            self._manifest["versions"][name] = {
                "alias": alias,
                "number": number,
                "dim": int(dim),
                "fingerprint": fingerprint,
                "vector_names": list(vector_names),
                "source": source,
                "complete": False,
                "created_at": time.time(),
            }
            self._write_manifest()
            return name

    def pending_version(self, alias: str, *, fingerprint: str, source: str) -> str | None:
        with self._guard:
            candidates = [
                (meta["number"], name)
                for name, meta in self._manifest["versions"].items()
                if meta["alias"] == alias
                and not meta["complete"]
                and meta["fingerprint"] == fingerprint
                and meta["source"] == source
            ]
        return max(candidates)[1] if candidates else None

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        shard = self._shard(collection)
        try:
            for start in range(0, len(points), _UPSERT_BATCH):
                batch = [
                    qe.Point(
                        id=point.id,
                        vector={name: _as_list(vec) for name, vec in point.vectors.items()},
                        payload=point.payload,
                    )
                    for point in points[start : start + _UPSERT_BATCH]
                ]
                shard.update(qe.UpdateOperation.upsert_points(batch))
        except Exception as exc:
            raise StoreError(f"upsert into {collection!r} failed: {exc}") from exc

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        wanted: list[qe.PointId] = list(ids)
        if not wanted:
            return
        try:
            self._shard(collection).update(qe.UpdateOperation.delete_points(wanted))
        except Exception as exc:
            raise StoreError(f"delete from {collection!r} failed: {exc}") from exc

    def ids(self, collection: str) -> set[str]:
        shard = self._shard(collection)
        found: set[str] = set()
        offset: qe.PointId | None = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, with_payload=False, with_vector=False)
            )
            found.update(str(record.id) for record in records)
            if offset is None:
                return found

    def count(self, collection: str) -> int:
        return int(self._shard(collection).count(qe.CountRequest(exact=True)))

    def finish_version(self, alias: str, collection: str, *, keep: int) -> None:
        with self._guard:
            meta = self._meta(collection)
            if meta["alias"] != alias:
                raise StoreError(f"collection {collection!r} belongs to {meta['alias']!r}, not {alias!r}")
            shard = self._shard(collection)
            try:
                shard.optimize()  # builds the HNSW graph and merges segments before readers switch over
                shard.flush()
            except Exception as exc:
                raise StoreError(f"indexing {collection!r} failed: {exc}") from exc
            meta.update(complete=True, finished_at=time.time())
            self._manifest["aliases"][alias] = collection
            self._write_manifest()  # the alias swap: one atomic rename
        self.prune_versions(alias, keep=keep)

    def versions(self, alias: str) -> list[CollectionInfo]:
        """All versions of `alias`, newest first."""
        with self._guard:
            ordered = sorted(
                (
                    (meta["number"], name)
                    for name, meta in self._manifest["versions"].items()
                    if meta["alias"] == alias
                ),
                reverse=True,
            )
        found = [self.collection_info(name) for _, name in ordered]
        return [info for info in found if info is not None]

    def prune_versions(self, alias: str, *, keep: int) -> list[str]:
        """Drop complete versions beyond the newest `keep` (the live one always stays), and
        unfinished builds older than the live version (abandoned). Returns the dropped names."""
        with self._guard:
            live = self._manifest["aliases"].get(alias)
            live_number = self._manifest["versions"][live]["number"] if live else None
            ordered = sorted(
                (
                    (meta["number"], name, meta)
                    for name, meta in self._manifest["versions"].items()
                    if meta["alias"] == alias
                ),
                reverse=True,
            )
            dropped: list[str] = []
            kept_complete = 0
            for number, name, meta in ordered:
                if name == live:
                    kept_complete += 1
                elif meta["complete"]:
                    kept_complete += 1
                    if kept_complete > max(keep, 1):
                        dropped.append(name)
                elif live_number is not None and number < live_number:
                    dropped.append(name)  # an abandoned build; newer ones may still be running
            if not dropped:
                return []
            for name in dropped:
                del self._manifest["versions"][name]
            self._write_manifest()  # forget first: a crash mid-delete leaves orphans, removed on open
            for name in dropped:
                shard = self._shards.pop(name, None)
                if shard is not None:
                    shard.close()
                shutil.rmtree(self.root / COLLECTIONS_DIR / name, ignore_errors=True)
            return dropped
