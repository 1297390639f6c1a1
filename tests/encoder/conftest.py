"""Encoder test helpers: image bytes, a server with small limits, and per-test gRPC stubs."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageDraw

from clipsearch.v1 import encoder_pb2_grpc
from services.encoder.server import EncoderServer, serve_in_thread
from services.encoder.settings import EncoderSettings

# Limits of the `limited_server`, small enough to hit in a test.
MAX_ITEMS = 8
MAX_IMAGE_BYTES = 4000
MAX_PIXELS = 100 * 100


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def digit_image(seed: int, size: int = 28) -> bytes:
    """A small white-on-black drawing that differs with `seed`."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    offset = seed % 7
    draw.line((4 + offset, 4, size - 5, size - 5 - offset), fill=255, width=3)
    draw.ellipse((6, 6 + offset, 18, 18 + offset), outline=200, width=2)
    return png(image)


def sketch_png(seed: int = 0) -> bytes:
    """A canvas drawing as a browser sends it: dark strokes on a transparent 200x200 canvas."""
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.line((60 + seed, 30, 140, 170 - seed), fill=(0, 0, 0, 255), width=12)
    return png(image)


@pytest.fixture(scope="session")
def limited_server(tiny_checkpoint: Path) -> Iterator[EncoderServer]:
    """A server with small limits and a batching window wide enough to batch concurrent calls."""
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        max_items_per_request=MAX_ITEMS,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_pixels=MAX_PIXELS,
        max_batch_size=16,
        max_wait_ms=50,
    )
    with serve_in_thread(settings) as server:
        yield server


async def _stub(target: str) -> AsyncIterator[encoder_pb2_grpc.EncoderStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)


@pytest.fixture
async def stub(encoder_target: str) -> AsyncIterator[encoder_pb2_grpc.EncoderStub]:
    """Encoder stub on the shared `encoder_target` server (default settings)."""
    async for value in _stub(encoder_target):
        yield value


@pytest.fixture
async def limited_stub(limited_server: EncoderServer) -> AsyncIterator[encoder_pb2_grpc.EncoderStub]:
    async for value in _stub(f"127.0.0.1:{limited_server.port}"):
        yield value
