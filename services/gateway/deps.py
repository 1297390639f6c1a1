"""Wiring: build the search core from settings, and FastAPI dependencies on it."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Request

from clipsearch.encoder_client import EncoderClient
from clipsearch.store import VectorStore, open_store
from services.gateway.collections import Collections
from services.gateway.embedding import QueryEmbedder
from services.gateway.errors import Unauthorized
from services.gateway.metrics import GatewayMetrics
from services.gateway.search import SearchCore
from services.gateway.settings import GatewaySettings
from services.gateway.store_handle import StoreHandle

API_KEY_HEADER = "x-api-key"


def build_core(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> SearchCore:
    """The search core; must be called inside the event loop that will use it (gRPC aio channel)."""
    encoder = EncoderClient(
        settings.encoder,
        timeout_s=settings.encoder_timeout_s,
        api_key=settings.encoder_api_key.get_secret_value() if settings.encoder_api_key else None,
    )
    qdrant_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None

    def opener() -> VectorStore:
        return open_store(settings.qdrant_url, Path(settings.store_path), qdrant_key)

    store = StoreHandle(opener, settings.qdrant_url or settings.store_path)
    metrics = metrics or GatewayMetrics()
    return SearchCore(
        settings,
        QueryEmbedder(encoder, settings, metrics),
        Collections(store, settings.collection, metrics, settings.info_ttl_s),
        metrics,
    )


def key_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so the key cannot be guessed byte by byte from timings."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# async: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per request.
async def get_core(request: Request) -> SearchCore:
    core: SearchCore = request.app.state.core
    return core


async def require_api_key(request: Request) -> None:
    settings: GatewaySettings = request.app.state.settings
    if settings.api_key is None:
        return
    if not key_matches(settings.api_key.get_secret_value(), request.headers.get(API_KEY_HEADER)):
        raise Unauthorized(f"missing or wrong API key (header {API_KEY_HEADER})")
