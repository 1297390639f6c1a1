"""The vector store: one small interface over Qdrant, used by the indexer and the gateway.

Collections are versioned behind an alias: the indexer builds a new physical
collection (a "version") and swaps the alias to it when complete, so readers
always search a complete index through the alias name.

Implementations: `QdrantStore` (qdrant-client: a server by URL, or its local
mode by path) and `clipsearch.edge_store.EdgeStore` (Qdrant Edge in process: the
embedded default). See `open_store`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

IMAGE_VECTOR = "image"
CAPTION_VECTOR = "caption"

# Payload fields that are indexed, and so can be filtered on, with their type.
FILTERABLE_FIELDS: dict[str, type] = {"label": int, "split": str, "source": str, "class_name": str}


class StoreError(RuntimeError):
    """A store operation failed; the message says why."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (server down, files locked by another process)."""


class FingerprintMismatch(StoreError):
    """The collection was built by another model than the one asked for."""


class FilterError(ValueError):
    """A query filter is malformed or names a field that cannot be filtered on."""


@dataclass(frozen=True)
class ClusterLayout:
    """How a Qdrant cluster spreads each new collection version (None: the server's default)."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


@dataclass(frozen=True)
class Point:
    id: str  # a UUID string (stable: uuid5 over source and item)
    vectors: dict[str, np.ndarray]  # IMAGE_VECTOR always; CAPTION_VECTOR where the item has a caption
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    name: str  # the physical collection (version)
    alias: str | None
    fingerprint: str  # the model fingerprint it was built with
    dim: int
    vector_names: list[str]
    count: int
    complete: bool  # the build finished (it is, or was, live behind the alias)
    extra: dict[str, Any] = field(default_factory=dict)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def validate_filter(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Check a user filter: {"label": 7}, {"label": [1, 7]}, {"split": "test"}.

    Returns the filter unchanged; raises FilterError with a message for the user.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FilterError("filter must be an object mapping payload fields to values")
    for key, value in spec.items():
        if key not in FILTERABLE_FIELDS:
            raise FilterError(
                f"unknown filter field {key!r}; filterable: {', '.join(sorted(FILTERABLE_FIELDS))}"
            )
        expected = FILTERABLE_FIELDS[key]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise FilterError(f"filter field {key!r} has an empty list")
        for item in values:
            ok = isinstance(item, expected) and not isinstance(item, bool)
            if expected is int and isinstance(item, float) and item.is_integer():
                ok = True
            if not ok:
                raise FilterError(f"filter field {key!r} takes {expected.__name__} values, got {item!r}")
            if expected is int and not INT64_MIN <= item <= INT64_MAX:  # the store keeps 64-bit integers
                raise FilterError(f"filter field {key!r} value {item!r} is out of range")
    return spec


def versions_prefix(alias: str) -> str:
    """Physical collections of `alias` are named `{alias}__v{number}`."""
    return f"{alias}__v"


class VectorStore(Protocol):
    # True where calls do no I/O waits (the embedded Edge store): a worker thread would buy no
    # parallelism, since Edge holds the GIL while it searches, only thread hand-offs.
    in_process: bool

    # --- read side (gateway) ---
    def collection_info(self, name_or_alias: str) -> CollectionInfo | None:
        """The collection an alias points at (or a physical collection); None if absent."""
        ...

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
        """Cosine top-k; `filter` as accepted by validate_filter."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...

    # --- write side (indexer) ---
    def create_version(
        self, alias: str, *, dim: int, fingerprint: str, vector_names: Sequence[str], source: str
    ) -> str:
        """A new, empty physical collection for `alias`; returns its name."""
        ...

    def pending_version(self, alias: str, *, fingerprint: str, source: str) -> str | None:
        """An unfinished version of the same model and source, to resume into."""
        ...

    def upsert(self, collection: str, points: Sequence[Point]) -> None: ...

    def delete(self, collection: str, ids: Iterable[str]) -> None: ...

    def ids(self, collection: str) -> set[str]: ...

    def count(self, collection: str) -> int: ...

    def finish_version(self, alias: str, collection: str, *, keep: int) -> None:
        """Mark complete, swap the alias to it atomically, drop versions beyond `keep`."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------
# Qdrant (qdrant-client): a server by URL, or the embedded local mode by path.
# ---------------------------------------------------------------------------

# Collection metadata key under which clipsearch records what built a version.
MANIFEST_KEY = "clipsearch"
_SCROLL_PAGE = 10_000
_LOCKED_MESSAGE = "already accessed by another instance"
_PAYLOAD_SCHEMA = {int: models.PayloadSchemaType.INTEGER, str: models.PayloadSchemaType.KEYWORD}


def to_qdrant_filter(spec: dict[str, Any] | None) -> models.Filter | None:
    """A validated user filter as Qdrant conditions: scalars match exactly, lists match any."""
    spec = validate_filter(spec)
    if not spec:
        return None
    conditions: list[models.Condition] = []
    for key, value in spec.items():
        cast = FILTERABLE_FIELDS[key]
        if isinstance(value, list):
            match: models.MatchAny | models.MatchValue = models.MatchAny(any=[cast(v) for v in value])
        else:
            match = models.MatchValue(value=cast(value))
        conditions.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=conditions)


def _version_number(name: str, alias: str) -> int | None:
    suffix = name.removeprefix(versions_prefix(alias))
    return int(suffix) if suffix != name and suffix.isdigit() else None


class QdrantStore:
    """VectorStore over qdrant-client. Build with `open_store`."""

    # A server is a network call; local mode is slow Python (numpy lets other threads run).
    in_process = False

    def __init__(
        self, client: QdrantClient, *, where: str, local: bool, layout: ClusterLayout | None = None
    ) -> None:
        self._client = client
        self._layout = layout or ClusterLayout()
        self._where = where
        self._local = local
        # The embedded store is not safe for concurrent use; a server client is.
        self._lock: threading.RLock | None = threading.RLock() if local else None
        if local:
            for collection in self._client.get_collections().collections:
                self._tune_local_storage(collection.name)

    def _tune_local_storage(self, name: str) -> None:
        """Make the embedded store's per-point SQLite commits cheap.

        qdrant-client's local mode commits every point on its own, each with a full fsync
        (about 45 points/s). Write-ahead logging with synchronous=NORMAL survives a killed
        process (resume depends on that) and is some 60x faster; only a power cut may lose
        the last few points, which a re-run writes again.
        """
        collection = getattr(getattr(self._client, "_client", None), "collections", {}).get(name)
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Serialise embedded access, and turn client errors into StoreError/StoreUnavailable."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            yield
        except StoreError:
            raise
        except ResponseHandlingException as exc:
            raise StoreUnavailable(f"Qdrant at {self._where} is unreachable ({action}): {exc}") from None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None):
                raise StoreUnavailable(
                    f"Qdrant at {self._where} is unreachable ({action}): {details}"
                ) from None
            raise StoreError(f"Qdrant at {self._where} failed to {action}: {details}") from None
        except UnexpectedResponse as exc:
            raise StoreError(f"Qdrant at {self._where} failed to {action}: {exc}") from None
        except (ValueError, RuntimeError) as exc:  # local mode reports bad names etc. as ValueError
            raise StoreError(f"store at {self._where} failed to {action}: {exc}") from None
        finally:
            if self._lock is not None:
                self._lock.release()

    # --- read side ---
    def ping(self) -> None:
        with self._guard("list collections"):
            self._client.get_collections()

    def _resolve(self, name_or_alias: str) -> tuple[str, str | None] | None:
        aliases = {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}
        if name_or_alias in aliases:
            return aliases[name_or_alias], name_or_alias
        if self._client.collection_exists(name_or_alias):
            alias = next((a for a, c in aliases.items() if c == name_or_alias), None)
            return name_or_alias, alias
        return None

    def _info(self, name: str, alias: str | None) -> CollectionInfo:
        described = self._client.get_collection(name)
        manifest = dict((described.config.metadata or {}).get(MANIFEST_KEY) or {})
        vectors = described.config.params.vectors
        vector_names = sorted(vectors) if isinstance(vectors, dict) else []
        count = described.points_count
        if count is None:
            count = self._client.count(name, exact=True).count
        return CollectionInfo(
            name=name,
            alias=alias,
            fingerprint=str(manifest.pop("fingerprint", "")),
            dim=int(manifest.pop("dim", 0)),
            vector_names=sorted(manifest.pop("vector_names", vector_names)),
            count=int(count),
            complete=bool(manifest.pop("complete", False)),
            extra=manifest,
        )

    def collection_info(self, name_or_alias: str) -> CollectionInfo | None:
        with self._guard(f"describe {name_or_alias!r}"):
            # An alias can move (and its old target be dropped) between the two calls: look again.
            for _ in range(3):
                resolved = self._resolve(name_or_alias)
                if resolved is None:
                    return None
                try:
                    return self._info(*resolved)
                except (ValueError, UnexpectedResponse, grpc.RpcError):
                    if self._client.collection_exists(resolved[0]):
                        raise
            return None

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
        query_filter = to_qdrant_filter(filter)
        with self._guard(f"search {name_or_alias!r}"):
            reply = self._client.query_points(
                collection_name=name_or_alias,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                using=using,
                limit=k,
                offset=offset,
                query_filter=query_filter,
                with_payload=True,
                with_vectors=False,
            )
        return [
            SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in reply.points
        ]

    # --- write side ---
    def versions(self, alias: str) -> list[CollectionInfo]:
        with self._guard(f"list versions of {alias!r}"):
            aliases = {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}
            live = aliases.get(alias)
            names = [c.name for c in self._client.get_collections().collections]
            numbered = [(n, _version_number(n, alias)) for n in names]
            ordered = sorted(((num, n) for n, num in numbered if num is not None), reverse=True)
            return [self._info(name, alias if name == live else None) for _, name in ordered]

    def create_version(
        self, alias: str, *, dim: int, fingerprint: str, vector_names: Sequence[str], source: str
    ) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", alias) or "__v" in alias:
            raise StoreError(f"collection name {alias!r} must be letters, digits, '_', '-' or '.' (no '__v')")
        with self._guard(f"create a version of {alias!r}"):
            existing = {c.name for c in self._client.get_collections().collections}
            number = time.time_ns() // 1000  # microseconds: sorts by creation time
            while f"{versions_prefix(alias)}{number}" in existing:
                number += 1
            name = f"{versions_prefix(alias)}{number}"
            manifest = {
                "fingerprint": fingerprint,
                "dim": dim,
                "vector_names": list(vector_names),
                "source": source,
                "complete": False,
                "created_at": time.time(),
            }
            self._client.create_collection(
                name,
                vectors_config={
                    vector: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                    for vector in vector_names
                },
                metadata={MANIFEST_KEY: manifest},
                shard_number=self._layout.shard_number,
                replication_factor=self._layout.replication_factor,
                write_consistency_factor=self._layout.write_consistency_factor,
            )
            self._tune_local_storage(name)
            if not self._local:  # payload indexes do nothing in local mode (and it warns)
                for key, kind in FILTERABLE_FIELDS.items():
                    self._client.create_payload_index(name, key, field_schema=_PAYLOAD_SCHEMA[kind])
        return name

    def pending_version(self, alias: str, *, fingerprint: str, source: str) -> str | None:
        for info in self.versions(alias):
            if not info.complete and info.fingerprint == fingerprint and info.extra.get("source") == source:
                return info.name
        return None

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=point.id,
                vector={name: np.asarray(v, dtype=np.float32).tolist() for name, v in point.vectors.items()},
                payload=point.payload,
            )
            for point in points
        ]
        with self._guard(f"write {len(points)} points to {collection!r}"):
            self._client.upsert(collection, points=structs, wait=True)

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        selected: list[models.ExtendedPointId] = list(ids)
        if not selected:
            return
        with self._guard(f"delete {len(selected)} points from {collection!r}"):
            self._client.delete(collection, points_selector=models.PointIdsList(points=selected), wait=True)

    def ids(self, collection: str) -> set[str]:
        found: set[str] = set()
        offset: Any = None
        with self._guard(f"list the points of {collection!r}"):
            while True:
                points, offset = self._client.scroll(
                    collection, limit=_SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=False
                )
                found.update(str(p.id) for p in points)
                if offset is None:
                    return found

    def count(self, collection: str) -> int:
        with self._guard(f"count the points of {collection!r}"):
            return int(self._client.count(collection, exact=True).count)

    def finish_version(self, alias: str, collection: str, *, keep: int) -> None:
        with self._guard(f"publish {collection!r} as {alias!r}"):
            described = self._client.get_collection(collection)
            manifest = dict((described.config.metadata or {}).get(MANIFEST_KEY) or {})
            manifest.update(complete=True, finished_at=time.time())
            # Metadata updates replace top-level keys: write the whole manifest back.
            self._client.update_collection(collection, metadata={MANIFEST_KEY: manifest})
            aliases = {a.alias_name for a in self._client.get_aliases().aliases}
            operations: list[models.AliasOperations] = []
            if alias in aliases:
                operations.append(
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                )
            operations.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
                )
            )
            # One request: readers see the old version or the new one, never no collection.
            self._client.update_collection_aliases(change_aliases_operations=operations)
        self.prune_versions(alias, keep=keep)

    def prune_versions(self, alias: str, *, keep: int) -> list[str]:
        """Drop complete versions beyond the newest `keep` (the live one always stays), and
        unfinished builds older than the live version (abandoned). Returns the dropped names."""
        versions = self.versions(alias)
        live = next((v for v in versions if v.alias == alias), None)
        live_number = _version_number(live.name, alias) if live else None
        dropped: list[str] = []
        kept_complete = 0
        for info in versions:
            number = _version_number(info.name, alias) or 0
            if info.alias == alias:
                kept_complete += 1
                continue
            if info.complete:
                kept_complete += 1
                if kept_complete <= max(keep, 1):
                    continue
            elif live_number is None or number > live_number:
                continue  # a build newer than the live version may still be running
            dropped.append(info.name)
        with self._guard(f"drop old versions of {alias!r}"):
            for name in dropped:
                self._client.delete_collection(name)
        return dropped

    def close(self) -> None:
        with self._guard("close"):
            self._client.close()


def open_store(
    url: str | None,
    path: Path | None,
    api_key: str | None = None,
    *,
    backend: str = "edge",
    layout: ClusterLayout | None = None,
) -> VectorStore:
    """A Qdrant server by URL (gRPC preferred), else the embedded store in `path`.

    The embedded store is Qdrant Edge (`backend="edge"`: HNSW and payload indexes, in
    process) unless `path` already holds a qdrant-client local-mode store, or
    `backend="local"` asks for one (brute force in Python; kept for comparison).
    Raises StoreUnavailable when the embedded store is held by another process.
    `layout` sets shards, replication and write consistency of new versions on a server.
    """
    if url:
        client = QdrantClient(
            url=url, prefer_grpc=True, api_key=api_key, timeout=30, check_compatibility=False
        )
        return QdrantStore(client, where=url, local=False, layout=layout)
    if path is None:
        raise StoreError("give either a Qdrant server URL or a local store path")
    path = Path(path)
    if backend not in ("edge", "local"):
        raise StoreError(f"unknown embedded store backend {backend!r}: use 'edge' or 'local'")
    if backend == "edge" and not (path / "meta.json").exists():  # meta.json: an existing local-mode store
        from clipsearch.edge_store import EdgeStore  # here: edge_store imports this module

        return EdgeStore(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        client = QdrantClient(path=str(path))
    except RuntimeError as exc:
        if _LOCKED_MESSAGE in str(exc):
            raise StoreUnavailable(
                f"the embedded vector store at {path} is in use by another process (for example the "
                "gateway). The embedded store allows one process at a time: run the indexer before "
                "starting the gateway, or point both at a Qdrant server URL."
            ) from None
        raise StoreUnavailable(f"cannot open the embedded vector store at {path}: {exc}") from None
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the embedded vector store at {path}: {exc}") from None
    return QdrantStore(client, where=str(path), local=True)
