"""The collections the gateway searches: every one the store publishes, each with its facts
(live version, the fingerprint of the model that built it, vectors) reused for a while, and the
store calls that answer queries over it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from clipsearch.store import (
    CAPTION_VECTOR,
    FILTERABLE_FIELDS,
    IMAGE_VECTOR,
    CollectionInfo,
    SearchHit,
    VectorStore,
)
from services.gateway.errors import NotFound, QueryError, Unavailable
from services.gateway.facts import Facts
from services.gateway.metrics import GatewayMetrics
from services.gateway.schemas import SearchOptions, Target
from services.gateway.store_handle import StoreHandle

T = TypeVar("T")
TARGET_VECTORS: dict[Target, str] = {"images": IMAGE_VECTOR, "captions": CAPTION_VECTOR}
# A payload field with more distinct values than this is listed without them (emoji's 1,906 names).
MAX_LISTED_VALUES = 64


class Collection:
    """One collection alias in the store, as the gateway sees it."""

    def __init__(self, name: str, store: StoreHandle, metrics: GatewayMetrics, ttl_s: float) -> None:
        self.name = name
        self.store = store
        self.metrics = metrics
        self._info: Facts[CollectionInfo] = Facts(ttl_s)
        self._fields: dict[str, dict[str, list[Any] | None]] = {}  # by version

    async def info(self, *, refresh: bool = False) -> CollectionInfo:
        """The live version's facts (reused for the TTL); Unavailable when there is none."""
        if not refresh and (known := self._info.fresh()) is not None:
            return known
        info = await self.call(lambda store: store.collection_info(self.name))
        if info is None:
            self._info.clear()
            raise Unavailable(f"collection {self.name!r} not found: run the indexer first")
        return self._info.set(info)

    def forget(self) -> None:
        """Ask the store again next time (the version a query was resolved to is gone)."""
        self._info.clear()

    def targets(self, info: CollectionInfo) -> list[Target]:
        return [target for target, vector in TARGET_VECTORS.items() if vector in info.vector_names]

    def vector_for(self, info: CollectionInfo, target: Target) -> str:
        using = TARGET_VECTORS[target]
        if using not in info.vector_names:
            raise QueryError(
                f"collection {self.name!r} has no {target} vectors; "
                f"targets here: {', '.join(self.targets(info))}"
            )
        return using

    async def filter_fields(self, info: CollectionInfo) -> dict[str, list[Any] | None]:
        """The filterable payload fields this version has, with their values (None: too many)."""
        known = self._fields.get(info.name)
        if known is None:
            known = {}
            for field in FILTERABLE_FIELDS:
                values = await self.call(
                    lambda store, field=field: store.facet(info.name, field, limit=MAX_LISTED_VALUES)  # type: ignore[misc]
                )
                if values != {}:
                    known[field] = None if values is None else sorted(values, key=str)
            self._fields = {info.name: known}  # one version's worth: a new version replaces it
        return known

    async def search(
        self, info: CollectionInfo, vector: np.ndarray, options: SearchOptions
    ) -> list[SearchHit]:
        """Search the version `info` names, not the alias: the query vector was made by that
        version's model, and the alias may move to another model's version meanwhile."""
        if vector.shape[-1] != info.dim:
            raise Unavailable(
                f"encoder vectors have {vector.shape[-1]} dimensions, the collection {info.dim}"
            )
        using = self.vector_for(info, options.target)
        started = time.perf_counter()
        found = await self.call(
            lambda store: store.search(
                info.name, vector, using=using, k=options.k, offset=options.offset, filter=options.filter
            )
        )
        self.metrics.stage_seconds.labels("search").observe(time.perf_counter() - started)
        return found

    async def call(self, operation: Callable[[VectorStore], T]) -> T:
        """A store call: inline for the in-process store (see VectorStore.in_process), else in a thread."""
        try:
            if self.store.in_process:
                return self.store.call(operation)
            return await asyncio.to_thread(self.store.call, operation)
        except Unavailable:
            self._info.clear()
            self.metrics.dependency_errors.labels("store").inc()
            raise


class Collections:
    """Every collection the store publishes, by name; `None` names the default one."""

    def __init__(self, store: StoreHandle, default: str, metrics: GatewayMetrics, ttl_s: float) -> None:
        self.store = store
        self.default = default
        self.metrics = metrics
        self.ttl_s = ttl_s
        self._names: Facts[list[str]] = Facts(ttl_s)
        self._known: dict[str, Collection] = {}

    async def names(self, *, refresh: bool = False) -> list[str]:
        """The published collections (reused for the TTL)."""
        if not refresh and (known := self._names.fresh()) is not None:
            return known
        try:
            aliases = (
                self.store.call(lambda store: store.aliases())
                if self.store.in_process
                else await asyncio.to_thread(self.store.call, lambda store: store.aliases())
            )
        except Unavailable:
            self._names.clear()
            self.metrics.dependency_errors.labels("store").inc()
            raise
        return self._names.set(sorted(aliases))

    async def get(self, name: str | None = None) -> Collection:
        """The collection `name` (the default when None). An unknown name is NotFound; the default
        collection is served before it exists (it answers Unavailable until it is indexed)."""
        wanted = name or self.default
        # A name not seen may have been published since the last look: ask again before refusing.
        if (
            wanted != self.default
            and wanted not in await self.names()
            and wanted not in await self.names(refresh=True)
        ):
            listed = ", ".join(await self.names()) or "none yet"
            raise NotFound(f"no collection {wanted!r}; collections here: {listed}")
        collection = self._known.get(wanted)
        if collection is None:
            collection = self._known[wanted] = Collection(wanted, self.store, self.metrics, self.ttl_s)
        return collection

    def close(self) -> None:
        self.store.close()
