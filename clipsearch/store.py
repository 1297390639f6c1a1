"""The vector store: one small interface over Qdrant, used by the indexer and the gateway.

Collections are versioned behind an alias: the indexer builds a new physical
collection (a "version") and swaps the alias to it when complete, so readers
always search a complete index through the alias name.

Implementations: `QdrantStore` (qdrant-client: a server by URL, or a local
path for the embedded default). See `open_store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

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
            raise FilterError(f"unknown filter field {key!r}; filterable: {', '.join(sorted(FILTERABLE_FIELDS))}")
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
    return spec


class VectorStore(Protocol):
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
