"""Collections versioned behind an alias, written once for every backend.

The indexer builds a new physical collection (a version, `{alias}__v{number}`) and swaps the
alias to it when complete, so readers always search a complete index through the alias name.
Each version carries a manifest (what built it, whether it is complete). `VersionedStore` holds
the policy (naming, manifest, resume, publish, prune) over a few primitives that each backend
implements: list the physical collections and the aliases, read a manifest, describe, create,
publish (write the manifest and move the alias, atomically for readers) and drop.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from clipsearch.store.base import IMAGE_VECTOR, CollectionInfo, SearchHit, StoreError

_ALIAS = re.compile(r"[A-Za-z0-9_.-]+")
_SEPARATOR = "__v"
# Manifest fields that CollectionInfo reports as attributes; the others go to its `extra`.
_DESCRIBED = ("fingerprint", "dim", "vector_names", "complete")


def versions_prefix(alias: str) -> str:
    """Physical collections of `alias` are named `{alias}__v{number}`."""
    return f"{alias}{_SEPARATOR}"


def check_alias(alias: str) -> None:
    if not _ALIAS.fullmatch(alias) or _SEPARATOR in alias:
        raise StoreError(f"collection name {alias!r} must be letters, digits, '_', '-' or '.' (no '__v')")


def version_number(name: str, alias: str) -> int | None:
    """The number of version `name` of `alias`; None when it is not one."""
    suffix = name.removeprefix(versions_prefix(alias))
    return int(suffix) if suffix != name and suffix.isdigit() else None


def new_version_name(alias: str, existing: Collection[str]) -> str:
    number = time.time_ns() // 1000  # microseconds: sorts by creation time
    while f"{versions_prefix(alias)}{number}" in existing:
        number += 1
    return f"{versions_prefix(alias)}{number}"


def new_manifest(*, fingerprint: str, dim: int, vector_names: Sequence[str], source: str) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "dim": int(dim),
        "vector_names": list(vector_names),
        "source": source,
        "complete": False,
        "created_at": time.time(),
    }


def describe(
    name: str, alias: str | None, manifest: dict[str, Any], count: int, vector_names: Sequence[str] = ()
) -> CollectionInfo:
    """CollectionInfo from a manifest; `vector_names`: the collection's own, for one built elsewhere."""
    return CollectionInfo(
        name=name,
        alias=alias,
        fingerprint=str(manifest.get("fingerprint", "")),
        dim=int(manifest.get("dim", 0)),
        vector_names=sorted(manifest.get("vector_names", vector_names)),
        count=int(count),
        complete=bool(manifest.get("complete", False)),
        extra={key: value for key, value in manifest.items() if key not in _DESCRIBED},
    )


def to_prune(
    newest_first: Sequence[tuple[str, bool]],
    live: str | None,
    keep: int,
    recently_published: Sequence[str] | None = None,
) -> list[str]:
    """The versions to drop, of (name, complete) pairs: complete ones beyond the `keep` most recently
    published (the live one always stays and counts), and unfinished builds older than the live
    version (abandoned; newer ones may still be running).

    `recently_published`: the complete versions, most recently published first (a rollback publishes
    an older version again, so what it replaced is the one to keep for the next rollback); default:
    creation order.
    """
    complete = [name for name, done in newest_first if done and name != live]
    if recently_published is not None:
        listed = set(complete)
        complete = [name for name in recently_published if name in listed]
    dropped = complete[max(keep, 1) - (1 if live is not None else 0) :]
    past_live = False
    for name, done in newest_first:
        if name == live:
            past_live = True
        elif not done and past_live:
            dropped.append(name)
    return dropped


def published_order(manifests: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Complete versions, most recently published first (`published_at`, else `finished_at`)."""
    complete = [(name, manifest) for name, manifest in manifests.items() if manifest.get("complete")]
    return [
        name
        for name, _ in sorted(
            complete,
            key=lambda pair: float(pair[1].get("published_at") or pair[1].get("finished_at") or 0.0),
            reverse=True,
        )
    ]


class VersionedStore(ABC):
    """The VectorStore methods that are policy, over the backend primitives below."""

    # --- primitives ---
    @abstractmethod
    def _op(self, action: str) -> AbstractContextManager[object]:
        """Around each operation: serialise access where the backend needs it, and turn the
        backend's errors into StoreError/StoreUnavailable naming `action`."""

    @abstractmethod
    def _names(self) -> Collection[str]:
        """Every physical collection."""

    @abstractmethod
    def _aliases(self) -> dict[str, str]:
        """Alias -> the physical collection it points at."""

    @abstractmethod
    def _manifest(self, name: str) -> dict[str, Any]:
        """A copy of the manifest of collection `name`; StoreError when there is none."""

    @abstractmethod
    def _describe(self, name: str, alias: str | None) -> CollectionInfo | None:
        """Collection `name` as CollectionInfo; None when it is gone."""

    @abstractmethod
    def _create(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        """A new empty collection with the vectors the manifest names, and its payload indexes."""

    @abstractmethod
    def _publish(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        """Write the manifest of `name` and point `alias` at it; readers see the old or the new."""

    def _repoint(self, alias: str, name: str, manifest: dict[str, Any]) -> None:
        """Point `alias` back at `name`, a version published before, with its manifest updated; a
        backend whose `_publish` prepares the version (Edge optimises, and so opens and holds it)
        overrides this to only move the alias."""
        self._publish(alias, name, manifest)

    def _describe_at_rest(self, name: str, alias: str | None) -> CollectionInfo | None:
        """`_describe` without opening the version where opening costs (Edge: this process would
        hold it, and a gateway could not open it once it is live again)."""
        return self._describe(name, alias)

    @abstractmethod
    def _drop(self, names: Sequence[str]) -> list[str]:
        """Drop the versions `names`; returns those dropped (a backend may keep one still in use)."""

    @abstractmethod
    def _search(
        self, name_or_alias: str, query: np.ndarray, *, using: str, k: int, offset: int, filter: Any
    ) -> list[SearchHit]:
        """`query`: one float32 row. The backend builds its filter with validate_filter first."""

    @abstractmethod
    def _facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]:
        """Up to `limit` (value, count) pairs of payload field `key` in collection `name`."""

    # --- the policy ---
    def aliases(self) -> dict[str, str]:
        with self._op("list the collections"):
            return self._aliases()

    def facet(self, name_or_alias: str, key: str, *, limit: int) -> dict[Any, int] | None:
        with self._op(f"list the values of {key!r} in {name_or_alias!r}"):
            name = self._aliases().get(name_or_alias, name_or_alias)
            found = self._facet(name, key, limit + 1)
        if len(found) > limit:
            return None
        return dict(sorted(found, key=lambda pair: (-pair[1], str(pair[0]))))

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
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        return self._search(name_or_alias, query, using=using, k=k, offset=offset, filter=filter)

    def collection_info(self, name_or_alias: str) -> CollectionInfo | None:
        with self._op(f"describe {name_or_alias!r}"):
            # An alias can move (and its old target be dropped) between two calls: look again.
            for _ in range(3):
                aliases = self._aliases()
                alias: str | None
                if name_or_alias in aliases:
                    name, alias = aliases[name_or_alias], name_or_alias
                elif name_or_alias in self._names():
                    name = name_or_alias
                    alias = next((a for a, live in aliases.items() if live == name), None)
                else:
                    return None
                info = self._describe(name, alias)
                if info is not None:
                    return info
            return None

    def _newest_first(self, alias: str) -> list[str]:
        numbered = ((version_number(name, alias), name) for name in self._names())
        return [
            name for _, name in sorted(((n, name) for n, name in numbered if n is not None), reverse=True)
        ]

    def versions(self, alias: str) -> list[CollectionInfo]:
        """All versions of `alias`, newest first."""
        with self._op(f"list versions of {alias!r}"):
            live = self._aliases().get(alias)
            found = [
                self._describe(name, alias if name == live else None) for name in self._newest_first(alias)
            ]
        return [info for info in found if info is not None]

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
        check_alias(alias)
        if dim <= 0 or not vector_names:
            raise StoreError("a collection needs a positive dimension and at least one vector name")
        manifest = {
            **(extra or {}),
            **new_manifest(fingerprint=fingerprint, dim=dim, vector_names=vector_names, source=source),
        }
        with self._op(f"create a version of {alias!r}"):
            name = new_version_name(alias, set(self._names()))
            self._create(alias, name, manifest)
        return name

    def pending_version(self, alias: str, *, fingerprint: str, source: str) -> str | None:
        with self._op(f"list versions of {alias!r}"):
            for name in self._newest_first(alias):
                manifest = self._manifest(name)
                if (
                    not manifest.get("complete")
                    and manifest.get("fingerprint") == fingerprint
                    and manifest.get("source") == source
                ):
                    return name
        return None

    def finish_version(
        self, alias: str, collection: str, *, keep: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Mark `collection` complete, point `alias` at it, drop versions beyond `keep`. `extra`: more
        facts for its manifest (an evaluation), written in the same step."""
        with self._op(f"publish {collection!r} as {alias!r}"):
            manifest = self._manifest(collection)
            if version_number(collection, alias) is None:
                raise StoreError(f"collection {collection!r} is not a version of {alias!r}")
            now = time.time()
            manifest.update({**(extra or {}), "complete": True, "finished_at": now, "published_at": now})
            self._publish(alias, collection, manifest)
        self.prune_versions(alias, keep=keep)

    def restore_version(
        self, alias: str, collection: str, *, keep: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Point `alias` back at `collection`, a complete version published before (a rollback)."""
        with self._op(f"publish {collection!r} again as {alias!r}"):
            if version_number(collection, alias) is None or collection not in self._names():
                raise StoreError(f"collection {collection!r} is not a version of {alias!r}")
            manifest = self._manifest(collection)
            if not manifest.get("complete"):
                raise StoreError(f"version {collection!r} was never completed; it cannot be published")
            manifest.update({**(extra or {}), "published_at": time.time()})
            self._repoint(alias, collection, manifest)
        self.prune_versions(alias, keep=keep)

    def previous_version(self, alias: str) -> CollectionInfo | None:
        """The complete version published most recently before the live one (what a rollback
        restores), None when there is none."""
        with self._op(f"list versions of {alias!r}"):
            live = self._aliases().get(alias)
            order = published_order({name: self._manifest(name) for name in self._newest_first(alias)})
            for name in order:
                if name != live and (info := self._describe_at_rest(name, None)) is not None:
                    return info
        return None

    def drop_version(self, alias: str, collection: str) -> None:
        """Drop a version that is not live (a candidate that failed its evaluation)."""
        with self._op(f"drop {collection!r}"):
            if version_number(collection, alias) is None:
                raise StoreError(f"collection {collection!r} is not a version of {alias!r}")
            if self._aliases().get(alias) == collection:
                raise StoreError(f"version {collection!r} is live as {alias!r}; it cannot be dropped")
            if collection in self._names():
                self._drop([collection])

    def prune_versions(self, alias: str, *, keep: int) -> list[str]:
        """Drop what `to_prune` says; returns the dropped names."""
        with self._op(f"drop old versions of {alias!r}"):
            live = self._aliases().get(alias)
            manifests = {name: self._manifest(name) for name in self._newest_first(alias)}
            newest_first = [(name, bool(manifest.get("complete"))) for name, manifest in manifests.items()]
            dropped = to_prune(newest_first, live, keep, published_order(manifests))
            return self._drop(dropped) if dropped else []
