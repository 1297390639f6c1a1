"""`EdgeStore`: the embedded vector store on Qdrant Edge (Qdrant's engine, in process).

Layout under the root directory:

    root/.edge.lock                fcntl lock: one process owns the store at a time
    root/manifest.json             aliases -> live version, per-version manifest (atomic rewrite)
    root/collections/<version>/    one Edge shard per physical collection (WAL + segments)

Unlike qdrant-client's local mode (brute force in Python), Edge builds HNSW and payload
indexes, so search stays in the sub-millisecond range at 100k points. This is the only module
that imports `qdrant_edge`; `open_store` loads it only when an Edge store is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from clipsearch.store.base import (
    FILTERABLE_FIELDS,
    CollectionInfo,
    CollectionNotFound,
    Point,
    SearchHit,
    StoreError,
    StoreUnavailable,
    validate_filter,
)
from clipsearch.store.versions import VersionedStore, describe, in_use, version_number

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".edge.lock"  # not ".lock": that is qdrant-client local mode's lock file
COLLECTIONS_DIR = "collections"
_UPSERT_BATCH = 1024
_SCROLL_PAGE = 10_000
# Kept in each version's manifest entry for stores written before the version policy was shared;
# the policy itself reads alias and number from the name.
_EDGE_KEYS = ("alias", "number")


@dataclass(frozen=True)
class EdgeTuning:
    """HNSW and optimiser settings (measured with bench/store.py). Pass one to EdgeStore to
    change them, for example by the expected collection size."""

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


def to_edge_filter(spec: dict[str, Any] | None) -> qe.Filter | None:
    """A user filter ({"label": 7}, {"label": [1, 7]}) as an Edge filter (fields ANDed)."""
    checked = validate_filter(spec)
    if not checked:
        return None
    conditions: list[Any] = []
    for key, value in checked.items():
        values = value if isinstance(value, list) else [value]
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


class EdgeStore(VersionedStore):
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
        self._state = self._read_manifest()
        self._remove_orphans()

    # --- lifecycle -------------------------------------------------------------------------

    def _acquire_lock(self) -> IO[str]:
        handle = open(self.root / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise in_use(self.root) from exc
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

    # --- the manifest file -----------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST_NAME
        if not path.exists():
            return {"aliases": {}, "versions": {}}
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"the store manifest {path} is unreadable: {exc}") from exc
        return state

    def _write_manifest(self) -> None:
        """Write-to-temp, fsync, rename: readers of the file see the old or the new manifest, whole."""
        path = self.root / MANIFEST_NAME
        temp = path.with_name(f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp")
        with open(temp, "w") as handle:
            json.dump(self._state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(self.root)

    def _remove_orphans(self) -> None:
        """Shard directories the manifest does not name: left by a crash mid-create or mid-drop."""
        for entry in (self.root / COLLECTIONS_DIR).iterdir():
            if entry.name not in self._state["versions"]:
                shutil.rmtree(entry, ignore_errors=True)
        for temp in self.root.glob(f".{MANIFEST_NAME}.*.tmp"):
            temp.unlink(missing_ok=True)

    def _shard(self, collection: str) -> qe.EdgeShard:
        self.ping()
        with self._guard:
            shard = self._shards.get(collection)
            if shard is None:
                self._manifest(collection)
                try:
                    shard = qe.EdgeShard.load(str(self.root / COLLECTIONS_DIR / collection))
                except Exception as exc:  # Edge raises bare Exception
                    raise StoreUnavailable(f"cannot open collection {collection!r}: {exc}") from exc
                self._shards[collection] = shard
            return shard

    # --- primitives of the version policy ---------------------------------------------------

    def _op(self, action: str) -> AbstractContextManager[object]:
        return self._guard  # the methods below raise StoreError themselves

    def _names(self) -> list[str]:
        return list(self._state["versions"])

    def _aliases(self) -> dict[str, str]:
        return dict(self._state["aliases"])

    def _manifest(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] | None = self._state["versions"].get(name)
        if entry is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return {key: value for key, value in entry.items() if key not in _EDGE_KEYS}

    def _describe(self, name: str, alias: str | None) -> CollectionInfo | None:
        if name not in self._state["versions"]:
            return None
        return describe(name, alias, self._manifest(name), self.count(name))

    def _create(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        self.ping()
        path = self.root / COLLECTIONS_DIR / name
        try:
            shard = qe.EdgeShard.create(
                str(path), self.tuning.edge_config(manifest["dim"], manifest["vector_names"])
            )
            for field_name, kind in FILTERABLE_FIELDS.items():
                shard.update(qe.UpdateOperation.create_field_index(field_name, _payload_schema(kind)))
            shard.flush()
        except Exception as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise StoreError(f"cannot create collection {name!r}: {exc}") from exc
        self._shards[name] = shard
        self._state["versions"][name] = {"alias": alias, "number": version_number(name, alias), **manifest}
        self._write_manifest()

    def _publish(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        shard = self._shard(name)
        try:
            shard.optimize()  # builds the HNSW graph and merges segments before readers switch over
            shard.flush()
        except Exception as exc:
            raise StoreError(f"indexing {name!r} failed: {exc}") from exc
        self._state["versions"][name].update(manifest)
        self._state["aliases"][alias] = name
        self._write_manifest()  # the alias swap: one atomic rename

    def _drop(self, names: Sequence[str]) -> None:
        for name in names:
            del self._state["versions"][name]
        self._write_manifest()  # forget first: a crash mid-delete leaves orphans, removed on open
        for name in names:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self.root / COLLECTIONS_DIR / name, ignore_errors=True)

    def _search(
        self, name_or_alias: str, query: np.ndarray, *, using: str, k: int, offset: int, filter: Any
    ) -> list[SearchHit]:
        condition = to_edge_filter(filter)
        with self._guard:
            name = self._state["aliases"].get(name_or_alias, name_or_alias)
            manifest = self._manifest(name)
        if using not in manifest["vector_names"]:
            raise StoreError(
                f"collection {name!r} has no {using!r} vectors (has: {', '.join(manifest['vector_names'])})"
            )
        if query.shape[0] != int(manifest["dim"]):
            raise StoreError(
                f"query vector has {query.shape[0]} dimensions; collection {name!r} has {manifest['dim']}"
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

    def _facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]:
        try:
            found = self._shard(name).facet(qe.FacetRequest(key, limit=limit, exact=True))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"listing the values of {key!r} in {name!r} failed: {exc}") from exc
        return [(hit.value, int(hit.count)) for hit in found.hits]

    # --- the rest of VectorStore ------------------------------------------------------------

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
