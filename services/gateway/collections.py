"""The collections the gateway searches: each one's facts (version, model fingerprint, vectors)
with their time to live, and the store calls that answer queries over it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from clipsearch.store import CAPTION_VECTOR, IMAGE_VECTOR, CollectionInfo, SearchHit, VectorStore
from services.gateway.errors import NotFound, QueryError, Unavailable
from services.gateway.facts import Facts
from services.gateway.metrics import GatewayMetrics
from services.gateway.schemas import SearchOptions, Target
from services.gateway.store_handle import StoreHandle

T = TypeVar("T")
TARGET_VECTORS: dict[Target, str] = {"images": IMAGE_VECTOR, "captions": CAPTION_VECTOR}


class Collection:
    """One collection alias in the store, as the gateway sees it."""

    def __init__(self, name: str, store: StoreHandle, metrics: GatewayMetrics, ttl_s: float) -> None:
        self.name = name
        self.store = store
        self.metrics = metrics
        self._info: Facts[CollectionInfo] = Facts(ttl_s)

    async def info(self, *, refresh: bool = False) -> CollectionInfo:
        """The live version's facts (reused for the TTL); Unavailable when there is none."""
        if not refresh and (known := self._info.fresh()) is not None:
            return known
        info = await self.call(lambda store: store.collection_info(self.name))
        if info is None:
            self._info.clear()
            raise Unavailable(f"collection {self.name!r} not found: run the indexer first")
        return self._info.set(info)

    def describe(self, info: CollectionInfo) -> dict[str, Any]:
        return {
            "alias": self.name,
            "version": info.name,
            "count": info.count,
            "fingerprint": info.fingerprint,
            "targets": self.targets(info),
            "class_names": list(info.extra.get("class_names", [])),
        }

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

    async def search(
        self, info: CollectionInfo, vector: np.ndarray, options: SearchOptions
    ) -> list[SearchHit]:
        if vector.shape[-1] != info.dim:
            raise Unavailable(
                f"encoder vectors have {vector.shape[-1]} dimensions, the collection {info.dim}"
            )
        using = self.vector_for(info, options.target)
        started = time.perf_counter()
        found = await self.call(
            lambda store: store.search(
                self.name, vector, using=using, k=options.k, offset=options.offset, filter=options.filter
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
    """The collections a gateway serves, by name; `None` names the default one."""

    def __init__(self, store: StoreHandle, default: str, metrics: GatewayMetrics, ttl_s: float) -> None:
        self.store = store
        self.default = default
        self._known = {default: Collection(default, store, metrics, ttl_s)}

    def get(self, name: str | None = None) -> Collection:
        found = self._known.get(name or self.default)
        if found is None:
            raise NotFound(f"no collection {name!r}; collections here: {', '.join(sorted(self._known))}")
        return found

    def names(self) -> list[str]:
        return sorted(self._known)

    def close(self) -> None:
        self.store.close()
