"""A lazily opened vector store that reopens after failures.

The embedded store may be locked by the indexer while the gateway starts, and a
Qdrant server may restart: the first call after a failure opens it afresh, so
the gateway recovers without a restart. Calls are blocking (run them in a
worker thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from clipsearch.store import CollectionNotFound, StoreError, StoreUnavailable, VectorStore
from services.gateway.errors import Unavailable, VersionGone

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreHandle:
    def __init__(self, opener: Callable[[], VectorStore], description: str) -> None:
        self._opener = opener
        self.description = description
        self._store: VectorStore | None = None
        self._lock = threading.Lock()

    def _get(self) -> VectorStore:
        with self._lock:
            if self._store is None:
                try:
                    self._store = self._opener()
                except StoreError as exc:
                    raise Unavailable(f"store {self.description} unavailable: {exc}") from None
            return self._store

    def call(self, operation: Callable[[Any], T]) -> T:
        """Run `operation(store)`; store failures become Unavailable and drop the handle."""
        store = self._get()
        try:
            return operation(store)
        except StoreUnavailable as exc:
            self._drop(store)
            raise Unavailable(f"store {self.description} unavailable: {exc}") from None
        except CollectionNotFound as exc:
            raise VersionGone(f"store {self.description}: {exc}") from None
        except StoreError as exc:
            raise Unavailable(f"store {self.description} failed: {exc}") from None

    @property
    def in_process(self) -> bool:
        """The store is open and its calls gain nothing from a worker thread (VectorStore.in_process)."""
        store = self._store
        return store is not None and store.in_process

    def ping(self) -> None:
        self.call(lambda store: store.ping())

    def _drop(self, store: VectorStore) -> None:
        with self._lock:
            if self._store is store:
                self._store = None
        try:
            store.close()
        except Exception:  # closing a broken client must not mask the original failure
            log.debug("closing a failed store client", exc_info=True)

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()
