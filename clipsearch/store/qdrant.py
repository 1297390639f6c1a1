"""`QdrantStore`: the store over qdrant-client, a Qdrant server by URL or its local mode by path."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from clipsearch.store.base import (
    FILTERABLE_FIELDS,
    ClusterLayout,
    CollectionInfo,
    CollectionNotFound,
    Point,
    SearchHit,
    StoreError,
    StoreUnavailable,
    validate_filter,
)
from clipsearch.store.versions import VersionedStore, describe

# Collection metadata key under which clipsearch records what built a version.
MANIFEST_KEY = "clipsearch"
_SCROLL_PAGE = 10_000
_LOCKED_MESSAGE = "already accessed by another instance"
_PAYLOAD_SCHEMA = {int: models.PayloadSchemaType.INTEGER, str: models.PayloadSchemaType.KEYWORD}


def to_qdrant_filter(spec: dict[str, Any] | None) -> models.Filter | None:
    """A user filter as Qdrant conditions (fields ANDed): scalars match exactly, lists match any."""
    checked = validate_filter(spec)
    if not checked:
        return None
    conditions: list[models.Condition] = []
    for key, value in checked.items():
        match = models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value)
        conditions.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=conditions)


def _stored_manifest(described: models.CollectionInfo) -> dict[str, Any]:
    return dict((described.config.metadata or {}).get(MANIFEST_KEY) or {})


class QdrantStore(VersionedStore):
    """VectorStore over qdrant-client. Build with `open_store` or `open_qdrant`."""

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
    def _op(self, action: str) -> Iterator[None]:
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
            if code == grpc.StatusCode.NOT_FOUND:
                raise CollectionNotFound(f"Qdrant at {self._where} cannot {action}: {details}") from None
            raise StoreError(f"Qdrant at {self._where} failed to {action}: {details}") from None
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise CollectionNotFound(f"Qdrant at {self._where} cannot {action}: {exc}") from None
            raise StoreError(f"Qdrant at {self._where} failed to {action}: {exc}") from None
        except (ValueError, RuntimeError) as exc:  # local mode reports bad names etc. as ValueError
            if "not found" in str(exc):
                raise CollectionNotFound(f"store at {self._where} cannot {action}: {exc}") from None
            raise StoreError(f"store at {self._where} failed to {action}: {exc}") from None
        finally:
            if self._lock is not None:
                self._lock.release()

    # --- primitives of the version policy ---
    def _names(self) -> list[str]:
        return [c.name for c in self._client.get_collections().collections]

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}

    def _manifest(self, name: str) -> dict[str, Any]:
        return _stored_manifest(self._client.get_collection(name))

    def _describe(self, name: str, alias: str | None) -> CollectionInfo | None:
        try:
            described = self._client.get_collection(name)
        except (ValueError, UnexpectedResponse, grpc.RpcError):
            if self._client.collection_exists(name):
                raise
            return None  # dropped since it was listed
        vectors = described.config.params.vectors
        count = described.points_count
        if count is None:
            count = self._client.count(name, exact=True).count
        own_names = sorted(vectors) if isinstance(vectors, dict) else []
        return describe(name, alias, _stored_manifest(described), count, own_names)

    def _create(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        self._client.create_collection(
            name,
            vectors_config={
                vector: models.VectorParams(size=manifest["dim"], distance=models.Distance.COSINE)
                for vector in manifest["vector_names"]
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

    def _publish(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        # Metadata updates replace top-level keys: write the whole manifest back.
        self._client.update_collection(name, metadata={MANIFEST_KEY: manifest})
        operations: list[models.AliasOperations] = []
        if alias in self._aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
            )
        )
        # One request: readers see the old version or the new one, never no collection.
        self._client.update_collection_aliases(change_aliases_operations=operations)

    def _drop(self, names: Sequence[str]) -> list[str]:
        for name in names:
            self._client.delete_collection(name)
        return list(names)

    def _facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]:
        reply = self._client.facet(name, key, limit=limit, exact=True)
        return [(hit.value, int(hit.count)) for hit in reply.hits]

    def _search(
        self, name_or_alias: str, query: np.ndarray, *, using: str, k: int, offset: int, filter: Any
    ) -> list[SearchHit]:
        query_filter = to_qdrant_filter(filter)
        with self._op(f"search {name_or_alias!r}"):
            reply = self._client.query_points(
                collection_name=name_or_alias,
                query=query.tolist(),
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

    # --- the rest of VectorStore ---
    def ping(self) -> None:
        with self._op("list collections"):
            self._client.get_collections()

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
        with self._op(f"write {len(points)} points to {collection!r}"):
            self._client.upsert(collection, points=structs, wait=True)

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        selected: list[models.ExtendedPointId] = list(ids)
        if not selected:
            return
        with self._op(f"delete {len(selected)} points from {collection!r}"):
            self._client.delete(collection, points_selector=models.PointIdsList(points=selected), wait=True)

    def ids(self, collection: str) -> set[str]:
        found: set[str] = set()
        offset: Any = None
        with self._op(f"list the points of {collection!r}"):
            while True:
                points, offset = self._client.scroll(
                    collection, limit=_SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=False
                )
                found.update(str(p.id) for p in points)
                if offset is None:
                    return found

    def count(self, collection: str) -> int:
        with self._op(f"count the points of {collection!r}"):
            return int(self._client.count(collection, exact=True).count)

    def close(self) -> None:
        with self._op("close"):
            self._client.close()


def open_qdrant(
    url: str | None, path: Path | None, api_key: str | None = None, *, layout: ClusterLayout | None = None
) -> QdrantStore:
    """A Qdrant server by URL (gRPC preferred), else qdrant-client's local mode in `path`.
    Raises StoreUnavailable when the local store is held by another process."""
    if url:
        client = QdrantClient(
            url=url, prefer_grpc=True, api_key=api_key, timeout=30, check_compatibility=False
        )
        return QdrantStore(client, where=url, local=False, layout=layout)
    if path is None:
        raise StoreError("give either a Qdrant server URL or a local store path")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        client = QdrantClient(path=str(path))
    except RuntimeError as exc:
        if _LOCKED_MESSAGE in str(exc):
            raise StoreUnavailable(
                f"the local-mode vector store at {path} is in use by another process (for example "
                "the gateway). qdrant-client's local mode allows one process at a time: run the indexer "
                "before starting the gateway, use the default embedded store (Qdrant Edge), or point "
                "both at a Qdrant server URL."
            ) from None
        raise StoreUnavailable(f"cannot open the embedded vector store at {path}: {exc}") from None
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the embedded vector store at {path}: {exc}") from None
    return QdrantStore(client, where=str(path), local=True)
