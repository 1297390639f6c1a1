"""The vector store: one small interface over Qdrant, used by the indexer and the gateway.

Collections are versioned behind an alias (see `clipsearch.store.versions`): the indexer
builds a new physical collection and swaps the alias to it when complete, so readers always
search a complete index through the alias name.

Modules: `base` (types, errors, the `VectorStore` interface, filter validation), `versions`
(the version policy, shared by the backends), `qdrant` (`QdrantStore`: qdrant-client, a
server by URL or its local mode by path), `edge` (`EdgeStore`: Qdrant Edge in process, the
embedded default; imported only when used) and `factory` (`open_store`).
"""

from clipsearch.store.base import (
    CAPTION_VECTOR,
    FILTERABLE_FIELDS,
    IMAGE_VECTOR,
    ClusterLayout,
    CollectionInfo,
    CollectionNotFound,
    FilterError,
    FingerprintMismatch,
    Point,
    SearchHit,
    StoreError,
    StoreUnavailable,
    VectorStore,
    validate_filter,
)
from clipsearch.store.factory import open_store
from clipsearch.store.qdrant import QdrantStore, to_qdrant_filter

__all__ = [
    "CAPTION_VECTOR",
    "FILTERABLE_FIELDS",
    "IMAGE_VECTOR",
    "ClusterLayout",
    "CollectionInfo",
    "CollectionNotFound",
    "FilterError",
    "FingerprintMismatch",
    "Point",
    "QdrantStore",
    "SearchHit",
    "StoreError",
    "StoreUnavailable",
    "VectorStore",
    "open_store",
    "to_qdrant_filter",
    "validate_filter",
]
