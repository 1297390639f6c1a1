"""What every store backend shares: the types, the errors, the `VectorStore` interface and the
filterable payload fields with the one check of a user filter (`validate_filter`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

IMAGE_VECTOR = "image"
CAPTION_VECTOR = "caption"

# Payload fields that are indexed, and so can be filtered on, with their type.
FILTERABLE_FIELDS: dict[str, type] = {
    "label": int,
    "split": str,
    "source": str,
    "class_name": str,
    "style": str,
    "group": str,
    "subgroup": str,
}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the store keeps 64-bit integers
# Bounds on what one filter may ask for: payload values are short names, and an any-of list
# becomes one condition per value in the store.
MAX_FILTER_STRING_CHARS = 256
MAX_FILTER_VALUES = 1_000


class StoreError(RuntimeError):
    """A store operation failed; the message says why."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (server down, files locked by another process)."""


class CollectionNotFound(StoreError):
    """The collection named does not exist (for a version: it was dropped)."""


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


def validate_filter(spec: Any) -> dict[str, Any] | None:
    """Check a user filter, {"label": 7}, {"label": [1, 7]}, {"split": "test"}, and return it
    normalised: whole floats become ints in int fields (JSON and protobuf Struct numbers may
    arrive as 7.0), lists are copied. Both backends build their native filter from this.

    Raises FilterError with a message for the user. Values are checked so that nothing the store
    cannot take gets to it: strings must be valid Unicode (no lone surrogates) of at most
    MAX_FILTER_STRING_CHARS, lists non-empty and at most MAX_FILTER_VALUES long, ints within
    int64 (no bools, NaN or infinities).
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FilterError("filter must be an object mapping payload fields to values")
    checked: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in FILTERABLE_FIELDS:
            raise FilterError(
                f"unknown filter field {_shown(key)}; filterable: {', '.join(sorted(FILTERABLE_FIELDS))}"
            )
        if isinstance(value, list):
            if not value:
                raise FilterError(f"filter field {key!r} has an empty list")
            if len(value) > MAX_FILTER_VALUES:
                raise FilterError(
                    f"filter field {key!r} lists {len(value)} values; the limit is {MAX_FILTER_VALUES}"
                )
            checked[key] = [_checked_value(key, item) for item in value]
        else:
            checked[key] = _checked_value(key, value)
    return checked


def _checked_value(key: str, value: Any) -> Any:
    expected = FILTERABLE_FIELDS[key]
    if expected is int:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise FilterError(f"filter field {key!r} takes int values, got {value!r}")
            if value.is_integer():
                value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise FilterError(f"filter field {key!r} takes int values, got {_shown(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            # Not the value itself: an int past 4,300 digits cannot even be printed.
            raise FilterError(f"filter field {key!r} takes 64-bit integers; the value given is out of range")
        return value
    if not isinstance(value, str):
        raise FilterError(f"filter field {key!r} takes {expected.__name__} values, got {_shown(value)}")
    if len(value) > MAX_FILTER_STRING_CHARS:
        raise FilterError(
            f"filter field {key!r} takes strings of at most {MAX_FILTER_STRING_CHARS} characters, "
            f"got {len(value)}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(
            f"filter field {key!r} value {_shown(value)} is not valid Unicode (a lone surrogate)"
        ) from None
    return value


def _shown(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr escapes surrogates; cut long ones, never print huge ints."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return "an integer out of the 64-bit range"
    if isinstance(value, (str, int, float, bool)) or value is None:
        shown = repr(value)
        return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"
    return f"a {type(value).__name__}"


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

    def aliases(self) -> dict[str, str]:
        """The published collections: alias -> the version it points at."""
        ...

    def facet(self, name_or_alias: str, key: str, *, limit: int) -> dict[Any, int] | None:
        """The values of payload field `key` with their counts, most frequent first; None when the
        field has more than `limit` distinct values (too many to list)."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...

    # --- write side (indexer) ---
    def create_version(
        self,
        alias: str,
        *,
        dim: int,
        fingerprint: str,
        vector_names: Sequence[str],
        source: str,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A new, empty physical collection for `alias`; returns its name. `extra`: more facts for
        its manifest (the model's name, credits), reported in CollectionInfo.extra."""
        ...

    def pending_version(self, alias: str, *, fingerprint: str, source: str) -> str | None:
        """An unfinished version of the same model and source, to resume into."""
        ...

    def upsert(self, collection: str, points: Sequence[Point]) -> None: ...

    def delete(self, collection: str, ids: Iterable[str]) -> None: ...

    def ids(self, collection: str) -> set[str]: ...

    def count(self, collection: str) -> int: ...

    def finish_version(
        self, alias: str, collection: str, *, keep: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Mark complete, swap the alias to it atomically, drop versions beyond `keep` (the most
        recently published stay). `extra`: more manifest facts, written with the swap."""
        ...

    def restore_version(
        self, alias: str, collection: str, *, keep: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Swap the alias back to a complete version published before (a rollback)."""
        ...

    def previous_version(self, alias: str) -> CollectionInfo | None:
        """The complete version published most recently before the live one; None if none."""
        ...

    def versions(self, alias: str) -> list[CollectionInfo]:
        """Every version of `alias`, newest first (complete or not)."""
        ...

    def drop_version(self, alias: str, collection: str) -> None:
        """Drop a version that is not live (StoreError for the live one)."""
        ...

    def close(self) -> None: ...
