"""Gateway fixtures: an embedded store indexed with the real encoder, and the real app."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image, ImageDraw

from clipsearch.encoder_client import EncoderClient
from clipsearch.media import MediaStore
from clipsearch.processes import free_port
from clipsearch.store import IMAGE_VECTOR, Point, open_store
from services.gateway.app import create_app
from services.gateway.search import MEDIA_KEY_FIELD
from services.gateway.settings import GatewaySettings

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION = "digits"
# Strokes of crude digits on a 28x28 grid: enough for distinct images per label.
STROKES: dict[int, list[tuple[int, int, int, int]]] = {
    0: [(8, 5, 20, 5), (20, 5, 20, 23), (20, 23, 8, 23), (8, 23, 8, 5)],
    1: [(14, 4, 14, 24)],
    2: [(8, 5, 20, 5), (20, 5, 20, 14), (20, 14, 8, 14), (8, 14, 8, 23), (8, 23, 20, 23)],
    3: [(8, 5, 20, 5), (20, 5, 20, 23), (20, 23, 8, 23), (10, 14, 20, 14)],
    4: [(8, 4, 8, 14), (8, 14, 20, 14), (18, 4, 18, 24)],
    5: [(20, 5, 8, 5), (8, 5, 8, 14), (8, 14, 20, 14), (20, 14, 20, 23), (20, 23, 8, 23)],
    6: [(20, 5, 8, 5), (8, 5, 8, 23), (8, 23, 20, 23), (20, 23, 20, 14), (20, 14, 8, 14)],
    7: [(7, 5, 21, 5), (21, 5, 12, 24)],
    8: [(8, 5, 20, 5), (20, 5, 20, 23), (20, 23, 8, 23), (8, 23, 8, 5), (8, 14, 20, 14)],
    9: [(20, 14, 8, 14), (8, 14, 8, 5), (8, 5, 20, 5), (20, 5, 20, 23)],
}


def digit_png(label: int, *, sketch: bool = False, shift: int = 0, size: int = 28) -> bytes:
    """MNIST-style (white on black) or, for sketches, a canvas drawing (black on white)."""
    scale = size / 28
    background, ink = (255, 0) if sketch else (0, 255)
    image = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in STROKES[label]:
        points = [(x0 + shift) * scale, y0 * scale, (x1 + shift) * scale, y1 * scale]
        draw.line(points, fill=ink, width=max(2, int(3 * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class IndexedItem:
    id: str
    label: int
    png: bytes
    media_key: str


@dataclass(frozen=True)
class Indexed:
    store_path: Path
    media_dir: Path
    items: list[IndexedItem]
    fingerprint: str
    model_name: str


async def _embed(target: str, images: list[bytes], model: str) -> tuple[np.ndarray, str, str]:
    async with EncoderClient(target) as client:
        info = await client.model_info(model)
        vectors = await client.embed_images(images, model=model)
        return vectors, info.fingerprint, info.model_name


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine run to its end in a worker thread's own event loop: callable inside a running
    event loop (async tests) as well as outside one."""
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, coroutine).result()


def embed_in_thread(target: str, images: list[bytes], model: str = "") -> tuple[np.ndarray, str, str]:
    """(vectors, fingerprint, model name) from the real encoder (see run_in_thread)."""
    return run_in_thread(_embed(target, images, model))


def build_index(
    root: Path,
    encoder_target: str,
    *,
    fingerprint: str | None = None,
    shifts: tuple[int, ...] = (0, 2),
    collection: str = COLLECTION,
    model: str = "",
    recorded_model: str | None = None,
) -> Indexed:
    """Index digit images through the real encoder (with `model`, when it serves several) into an
    embedded store, closed afterwards. Each item's style says whether its digit is shifted.
    `recorded_model`: the model name the version records (default: the one that built it)."""
    media = MediaStore(root / "media")
    items = [
        IndexedItem(str(uuid.uuid4()), label, png, media.put(png))
        for shift in shifts
        for label in range(10)
        for png in [digit_png(label, shift=shift)]
    ]
    item_shifts = [shift for shift in shifts for _ in range(10)]
    vectors, model_fingerprint, model_name = embed_in_thread(encoder_target, [i.png for i in items], model)
    store = open_store(None, root / "qdrant")
    try:
        version = store.create_version(
            collection,
            dim=vectors.shape[1],
            fingerprint=fingerprint or model_fingerprint,
            vector_names=[IMAGE_VECTOR],
            source="tests",
            extra={"model_name": recorded_model or model or model_name},
        )
        store.upsert(
            version,
            [
                Point(
                    id=item.id,
                    vectors={IMAGE_VECTOR: vector},
                    payload={
                        "label": item.label,
                        "split": "test",
                        "style": "plain" if shift == 0 else "shifted",
                        "group": "even" if item.label % 2 == 0 else "odd",
                        MEDIA_KEY_FIELD: item.media_key,
                    },
                )
                for item, vector, shift in zip(items, vectors, item_shifts, strict=True)
            ],
        )
        store.finish_version(collection, version, keep=1)
    finally:
        store.close()
    return Indexed(root / "qdrant", root / "media", items, model_fingerprint, model_name)


@pytest.fixture(scope="session")
def indexed(tmp_path_factory: pytest.TempPathFactory, encoder_target: str) -> Indexed:
    return build_index(tmp_path_factory.mktemp("gateway-index"), encoder_target)


def settings_for(indexed: Indexed, encoder: str, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "encoder": encoder,
        "store_path": str(indexed.store_path),
        "media_dir": str(indexed.media_dir),
        "collection": COLLECTION,
        "encoder_timeout_s": 5.0,
        "info_ttl_s": 0.0,
        "api_key": None,
        "qdrant_url": None,
        **overrides,
    }
    return GatewaySettings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an in-process HTTP client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@contextmanager
def serve_http(app: FastAPI) -> Iterator[str]:
    """The app behind uvicorn on a loopback port, in a background thread: its base URL
    ("http://127.0.0.1:PORT"), for clients that need real HTTP (a browser, another event loop)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


GatewayFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def gateway(indexed: Indexed, encoder_target: str) -> GatewayFactory:
    """`async with gateway(**settings overrides) as client:` a served app over the test index."""

    def open_gateway(**overrides: object) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return serving(create_app(settings_for(indexed, encoder_target, **overrides)))

    return open_gateway
