"""`EdgeStore`: the embedded vector store on Qdrant Edge (Qdrant's engine, in process).

Layout under the root directory:

    root/.edge.lock                fcntl lock, held only while the manifest is changed
    root/manifest.json             aliases -> live version, per-version manifest (atomic rewrite)
    root/collections/<version>/    one Edge shard per physical collection (WAL + segments)

Several processes may open one store: a gateway serves the live versions while an indexer
builds a new version beside them and publishes it. What Edge allows is one process per
version (shard) at a time: a writer holds the version it builds and lets go of it when it
publishes; a reader loads published versions when asked and lets go of a version once it has
stopped being live and has not been used for a while, so that a later writer can drop it.
Every process re-reads the manifest when the file changes.

Unlike qdrant-client's local mode (brute force in Python), Edge builds HNSW and payload
indexes, so search stays in the sub-millisecond range at 100k points. This is the only module
that imports `qdrant_edge`; `open_store` loads it only when an Edge store is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from clipsearch.store.versions import VersionedStore, describe, version_number

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".edge.lock"  # not ".lock": that is qdrant-client local mode's lock file
COLLECTIONS_DIR = "collections"
_UPSERT_BATCH = 1024
_SCROLL_PAGE = 10_000
# Kept in each version's manifest entry for stores written before the version policy was shared;
# the policy itself reads alias and number from the name. "points" is the count at publishing,
# for describing a published version that another process holds.
_EDGE_KEYS = ("alias", "number", "points")
# A version that stopped being live is let go of after this long unused (queries resolved to it
# just before the alias moved still finish on it), so that another process can drop it.
RELEASE_AFTER_S = 30.0
# Edge refuses to open a shard another process (or another EdgeShard) holds: its WAL is locked.
_HELD_ELSEWHERE = "WouldBlock"


# From this size on a collection gets the large-collection settings (EdgeTuning.for_size): a single
# full-precision segment's build grows with the collection (about 1 GB at 200k points).
LARGE_COLLECTION = 500_000
LARGE_SEGMENT_POINTS = 125_000


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
    # int8 scalar quantization: a copy of each vector in a quarter of the bytes, kept in RAM, that the
    # graph walk scores with; the best `k * oversampling` candidates are then rescored with the
    # original vectors. None: no quantized copy.
    quantization: Literal["int8"] | None = None
    quantile: float | None = None  # the int8 range covers this quantile of values (None: Qdrant's)
    # Search: rescore twice k candidates (recall@10 0.993 -> 0.9995 at a million, p50 unchanged).
    # Searches use it whatever built the version: a gateway does not know an indexer's settings.
    oversampling: float | None = 2.0
    rescore: bool = True
    # Where the original vectors live: None keeps Edge's default (in RAM); "cold" leaves them in
    # their files (memory-mapped, read on demand: the page cache holds what searches touch).
    vectors_memory: Literal["cold", "cached"] | None = None
    # Grow a collection in segments of about this many points, each indexed by the upsert that fills
    # it, instead of one segment indexed when the version is published: the build's memory is then
    # bounded by one segment, and publishing indexes only the last. None: one segment, built at the end.
    segment_points: int | None = None

    @classmethod
    def for_size(cls, points: int) -> EdgeTuning:
        """The measured best settings for a collection of about `points` vectors (bench/store.py,
        README's table): the defaults up to LARGE_COLLECTION points; past it, int8 vectors in RAM
        rescored from the originals on disk, and segments indexed as they fill, which bound the
        build's memory by a segment and keep recall@10 at 0.999 at a million."""
        if points < LARGE_COLLECTION:
            return cls()
        return cls(
            quantization="int8",
            vectors_memory="cold",
            segment_points=LARGE_SEGMENT_POINTS,
            # A filter matching under 10 MB of a segment's vectors is scanned; above, it stays on the
            # graph: a scan reads the original vectors, which are on disk here.
            full_scan_threshold_kb=10_000,
        )

    def edge_config(self, dim: int, vector_names: Sequence[str]) -> qe.EdgeConfig:
        hnsw = qe.HnswIndexConfig(
            m=self.m,
            ef_construct=self.ef_construct,
            full_scan_threshold=self.full_scan_threshold_kb,
            max_indexing_threads=self.max_indexing_threads,
            payload_m=self.payload_m,
        )
        max_segment_kb = self.max_segment_size_kb
        if self.segment_points is not None and max_segment_kb is None:
            # Room for a full segment and a batch more, not for a full one and another's remainder:
            # the optimiser would merge them into one and build its graph again.
            max_segment_kb = math.ceil(self.segment_points * 1.01 * dim * 4 * len(vector_names) / 1024)
        optimizers = qe.EdgeOptimizersConfig(
            default_segment_number=self.default_segment_number,
            indexing_threshold=self.indexing_threshold_kb,
            max_segment_size=max_segment_kb,
        )
        memory = _MEMORY[self.vectors_memory] if self.vectors_memory else None
        vectors = {
            name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=memory)
            for name in vector_names
        }
        quantization = (
            qe.ScalarQuantizationConfig(
                type=qe.ScalarType.Int8, quantile=self.quantile, memory=qe.Memory.Pinned
            )
            if self.quantization == "int8"
            else None
        )
        return qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=hnsw,
            quantization_config=quantization,
            optimizers=optimizers,
            max_search_threads=self.max_search_threads,
        )

    def search_params(self, limit: int) -> qe.SearchParams:
        # The quantization parameters go with every search, whatever this store's build settings: a
        # gateway searches versions an indexer built (quantized or not: Edge ignores them where not).
        quantization = qe.QuantizationSearchParams(rescore=self.rescore, oversampling=self.oversampling)
        return qe.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), quantization=quantization)


_MEMORY = {"cold": qe.Memory.Cold, "cached": qe.Memory.Cached}


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
    """`VectorStore` on Qdrant Edge shards under one root directory, shared by processes."""

    # Sub-millisecond to a few ms per search, GIL held throughout (see VectorStore.in_process).
    in_process = True

    def __init__(self, root: str | os.PathLike[str], *, tuning: EdgeTuning | None = None) -> None:
        self.root = Path(root)
        self.tuning = tuning or EdgeTuning()
        self._guard = threading.RLock()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._unindexed: dict[str, int] = {}  # points upserted since the last segment was indexed
        self._used: dict[str, float] = {}  # version -> when this process last used it
        self._writing: set[str] = set()  # versions this process created and has not published
        self._closed = False
        self._seen: tuple[int, int, int] | None = None  # the manifest file's (inode, size, mtime)
        self._retired_check = 0.0
        self._state: dict[str, Any] = {"aliases": {}, "versions": {}}
        try:
            (self.root / COLLECTIONS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the store directory {self.root}: {exc}") from exc
        with self._exclusive():
            self._remove_orphans()

    # --- lifecycle -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the store's lock (other processes wait) with the manifest freshly read: changes to
        the manifest are made inside, so none is lost to another process's."""
        with self._guard, open(self.root / LOCK_NAME, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                self._refresh()
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            for name in list(self._shards):
                self._let_go(name)
            self._closed = True

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

    def _refresh(self) -> None:
        """Re-read the manifest when the file changed (another process published or dropped), and
        now and then let go of versions that stopped being live a while ago."""
        path = self.root / MANIFEST_NAME
        try:
            stat = path.stat()
        except FileNotFoundError:
            return  # a new store: nothing published yet
        except OSError as exc:
            raise StoreUnavailable(f"cannot read the store manifest {path}: {exc}") from exc
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen != self._seen:
            try:
                state: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"the store manifest {path} is unreadable: {exc}") from exc
            self._state, self._seen = state, seen
        now = time.monotonic()
        if now - self._retired_check > RELEASE_AFTER_S / 10:
            self._retired_check = now
            live = set(self._state["aliases"].values())
            for name in list(self._shards):
                if name in live or name in self._writing:
                    continue
                if name not in self._state["versions"] or now - self._used.get(name, 0) > RELEASE_AFTER_S:
                    self._let_go(name)

    def _write_manifest(self) -> None:
        """Write-to-temp, fsync, rename: readers of the file see the old or the new manifest, whole.
        Called inside `_exclusive`."""
        path = self.root / MANIFEST_NAME
        temp = path.with_name(f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp")
        with open(temp, "w") as handle:
            json.dump(self._state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(self.root)
        stat = path.stat()
        self._seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _remove_orphans(self) -> None:
        """Shard directories the manifest does not name (left by a crash mid-create or mid-drop),
        and temporary manifests. Called inside `_exclusive`, as every change of either is."""
        for entry in (self.root / COLLECTIONS_DIR).iterdir():
            if entry.name not in self._state["versions"]:
                shutil.rmtree(entry, ignore_errors=True)
        for temp in self.root.glob(f".{MANIFEST_NAME}.*.tmp"):
            temp.unlink(missing_ok=True)

    def _shard(self, collection: str) -> qe.EdgeShard:
        self.ping()
        with self._guard:
            self._used[collection] = time.monotonic()
            shard = self._shards.get(collection)
            if shard is None:
                self._refresh()
                self._manifest(collection)
                try:
                    shard = qe.EdgeShard.load(str(self.root / COLLECTIONS_DIR / collection))
                except Exception as exc:  # Edge raises bare Exception
                    if _HELD_ELSEWHERE in str(exc):
                        raise StoreUnavailable(
                            f"collection version {collection!r} of the embedded store at {self.root} is "
                            "in use by another process (a gateway serving it, or an indexer writing into "
                            "it): one process at a time may open a version. A full index builds a new "
                            "version beside it; or stop the other process, or point both at a Qdrant "
                            "server URL."
                        ) from None
                    if not (self.root / COLLECTIONS_DIR / collection).is_dir():
                        raise CollectionNotFound(f"collection {collection!r} was dropped") from None
                    raise StoreUnavailable(f"cannot open collection {collection!r}: {exc}") from exc
                self._shards[collection] = shard
            return shard

    def _let_go(self, name: str) -> None:
        """Flush and close a version this process holds, so that others may open it."""
        shard = self._shards.pop(name, None)
        self._used.pop(name, None)
        if shard is not None:
            with contextlib.suppress(Exception):
                shard.flush()
            shard.close()

    # --- primitives of the version policy ---------------------------------------------------

    @contextlib.contextmanager
    def _op(self, action: str) -> Iterator[None]:
        # The methods below raise StoreError themselves; here the manifest is brought up to date.
        with self._guard:
            self._refresh()
            yield

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
        entry = self._state["versions"].get(name)
        if entry is None:
            return None
        try:
            count = self.count(name)
        except StoreUnavailable:
            if "points" not in entry:  # not published: its writer holds it
                raise
            count = int(entry["points"])  # published, and held by another process
        return describe(name, alias, self._manifest(name), count)

    def _create(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        self.ping()
        path = self.root / COLLECTIONS_DIR / name
        with self._exclusive():  # the directory and its manifest entry appear together for others
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
            self._writing.add(name)
            self._state["versions"][name] = {
                "alias": alias,
                "number": version_number(name, alias),
                **manifest,
            }
            self._write_manifest()

    def _publish(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        shard = self._shard(name)
        try:
            shard.optimize()  # builds the HNSW graph and merges segments before readers switch over
            shard.flush()
            points = int(shard.count(qe.CountRequest(exact=True)))
        except Exception as exc:
            raise StoreError(f"indexing {name!r} failed: {exc}") from exc
        # Readers in other processes open the version once the alias points at it: let go first.
        self._writing.discard(name)
        self._let_go(name)
        with self._exclusive():
            if name not in self._state["versions"]:
                raise CollectionNotFound(f"collection {name!r} was dropped while it was published")
            self._state["versions"][name].update(manifest, points=points)
            self._state["aliases"][alias] = name
            self._write_manifest()  # the alias swap: one atomic rename

    def _repoint(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        # Optimised when first published: only the alias moves (a reader may hold the version).
        with self._exclusive():
            if name not in self._state["versions"]:
                raise CollectionNotFound(f"collection {name!r} was dropped")
            self._state["versions"][name].update(manifest)
            self._state["aliases"][alias] = name
            self._write_manifest()

    def _describe_at_rest(self, name: str, alias: str | None) -> CollectionInfo | None:
        entry = self._state["versions"].get(name)
        if entry is None or name in self._shards or "points" not in entry:
            return self._describe(name, alias)
        return describe(name, alias, self._manifest(name), int(entry["points"]))

    def _drop(self, names: Sequence[str]) -> list[str]:
        with self._exclusive():
            dropped = [name for name in names if name in self._state["versions"] and self._free(name)]
            for name in dropped:
                del self._state["versions"][name]
            if dropped:
                self._write_manifest()  # forget first: a crash mid-delete leaves orphans, removed on open
        for name in dropped:
            shutil.rmtree(self.root / COLLECTIONS_DIR / name, ignore_errors=True)
        return dropped

    def _free(self, name: str) -> bool:
        """Whether no other process holds version `name` (a gateway still serving it): such a
        version stays, and a later prune drops it once its holder has let go."""
        self._writing.discard(name)
        self._let_go(name)
        try:
            qe.EdgeShard.load(str(self.root / COLLECTIONS_DIR / name)).close()
        except Exception as exc:
            return _HELD_ELSEWHERE not in str(exc)
        return True

    def _search(
        self, name_or_alias: str, query: np.ndarray, *, using: str, k: int, offset: int, filter: Any
    ) -> list[SearchHit]:
        condition = to_edge_filter(filter)
        with self._guard:
            self._refresh()
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
            params=self.tuning.search_params(k + offset),
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
        self._writing.add(collection)  # held while written, whatever its age
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
            self._index_full_segment(collection, shard, len(points))
        except Exception as exc:
            raise StoreError(f"upsert into {collection!r} failed: {exc}") from exc

    def _index_full_segment(self, collection: str, shard: qe.EdgeShard, added: int) -> None:
        if self.tuning.segment_points is None:
            return
        with self._guard:
            pending = self._unindexed.get(collection, 0) + added
            if pending >= self.tuning.segment_points:
                shard.optimize()  # indexes the full segment; later points go to a new one
                shard.flush()  # so the write-ahead log of the indexed points can be truncated
                pending = 0
            self._unindexed[collection] = pending

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        wanted: list[qe.PointId] = list(ids)
        if not wanted:
            return
        try:
            self._shard(collection).update(qe.UpdateOperation.delete_points(wanted))
            self._writing.add(collection)
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
