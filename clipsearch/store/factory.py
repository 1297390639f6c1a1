"""`open_store`: the store a service is configured with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.store.base import ClusterLayout, StoreError, VectorStore
from clipsearch.store.qdrant import open_qdrant

if TYPE_CHECKING:
    from clipsearch.store.edge import EdgeTuning

BACKENDS = ("edge", "local")


def open_store(
    url: str | None,
    path: Path | None,
    api_key: str | None = None,
    *,
    backend: str = "edge",
    layout: ClusterLayout | None = None,
    tuning: EdgeTuning | None = None,
) -> VectorStore:
    """A Qdrant server by URL (gRPC preferred), else the embedded store in `path`.

    The embedded store is Qdrant Edge (`backend="edge"`: HNSW and payload indexes, in
    process) unless `path` already holds a qdrant-client local-mode store, or
    `backend="local"` asks for one (brute force in Python; kept for comparison).
    Raises StoreUnavailable when the embedded store is held by another process.
    `layout` sets shards, replication and write consistency of new versions on a server;
    `tuning` the HNSW and optimiser settings of new Edge versions.
    """
    if url:
        return open_qdrant(url, None, api_key, layout=layout)
    if path is None:
        raise StoreError("give either a Qdrant server URL or a local store path")
    path = Path(path)
    if backend not in BACKENDS:
        raise StoreError(f"unknown embedded store backend {backend!r}: use 'edge' or 'local'")
    if backend == "edge" and not (path / "meta.json").exists():  # meta.json: an existing local-mode store
        from clipsearch.store.edge import EdgeStore  # here: qdrant_edge loads only when it is used

        return EdgeStore(path, tuning=tuning)
    return open_qdrant(None, path)
