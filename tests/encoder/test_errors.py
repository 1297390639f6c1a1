"""Every caller mistake is INVALID_ARGUMENT naming the item; a model still loading is UNAVAILABLE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import EncoderServer
from services.encoder.settings import EncoderSettings
from tests.encoder.conftest import MAX_IMAGE_BYTES, MAX_ITEMS, digit_image, png

GOOD = digit_image(0)
BLANK_CANVAS = png(Image.new("RGB", (64, 64), "white"))
TOO_MANY_PIXELS = png(Image.new("L", (101, 100), 0))  # tiny file, 10,100 pixels > 10,000
NOISE = Image.effect_noise((64, 64), 100).convert("L")
TOO_MANY_BYTES = png(NOISE)  # noise does not compress: > MAX_IMAGE_BYTES

CASES: list[tuple[str, str, Any, str]] = [
    ("EmbedText", "empty batch", encoder_pb2.EmbedTextRequest(texts=[]), "no texts"),
    (
        "EmbedText",
        "too many",
        encoder_pb2.EmbedTextRequest(texts=["one"] * (MAX_ITEMS + 1)),
        f"limit is {MAX_ITEMS}",
    ),
    ("EmbedText", "empty text", encoder_pb2.EmbedTextRequest(texts=["one", ""]), "text 1 is empty"),
    ("EmbedText", "blank text", encoder_pb2.EmbedTextRequest(texts=["   "]), "text 0 is empty"),
    ("EmbedText", "overlong", encoder_pb2.EmbedTextRequest(texts=["one", "one " * 40]), "text 1 is"),
    ("EmbedImages", "empty batch", encoder_pb2.EmbedImagesRequest(images=[]), "no images"),
    ("EmbedImages", "too many", encoder_pb2.EmbedImagesRequest(images=[GOOD] * (MAX_ITEMS + 1)), "limit is"),
    ("EmbedImages", "empty image", encoder_pb2.EmbedImagesRequest(images=[GOOD, b""]), "image 1 is empty"),
    ("EmbedImages", "undecodable", encoder_pb2.EmbedImagesRequest(images=[GOOD, b"GIF89a junk"]), "image 1"),
    ("EmbedImages", "truncated", encoder_pb2.EmbedImagesRequest(images=[GOOD[:60]]), "image 0"),
    (
        "EmbedImages",
        "over bytes",
        encoder_pb2.EmbedImagesRequest(images=[GOOD, TOO_MANY_BYTES]),
        "image 1 is",
    ),
    ("EmbedImages", "over pixels", encoder_pb2.EmbedImagesRequest(images=[TOO_MANY_PIXELS]), "pixels"),
    ("EmbedSketches", "empty batch", encoder_pb2.EmbedSketchesRequest(sketches=[]), "no sketches"),
    (
        "EmbedSketches",
        "blank sketch",
        encoder_pb2.EmbedSketchesRequest(sketches=[GOOD, BLANK_CANVAS]),
        "sketch 1",
    ),
    ("EmbedSketches", "undecodable", encoder_pb2.EmbedSketchesRequest(sketches=[b"<svg/>"]), "sketch 0"),
]


def test_oversized_fixture_is_really_oversized() -> None:
    assert len(TOO_MANY_BYTES) > MAX_IMAGE_BYTES


@pytest.mark.parametrize(
    ("method", "case", "request_message", "message"), CASES, ids=[f"{m}-{c}" for m, c, *_ in CASES]
)
async def test_bad_input_is_invalid_argument_naming_the_item(
    limited_stub: encoder_pb2_grpc.EncoderStub, method: str, case: str, request_message: Any, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(limited_stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert message in (caught.value.details() or "")


async def test_blank_sketch_message_says_no_strokes(limited_stub: encoder_pb2_grpc.EncoderStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limited_stub.EmbedSketches(encoder_pb2.EmbedSketchesRequest(sketches=[BLANK_CANVAS]))
    assert "no strokes" in (caught.value.details() or "")


async def test_stream_batch_over_the_item_limit_fails_the_stream(
    limited_stub: encoder_pb2_grpc.EncoderStub,
) -> None:
    async def requests() -> AsyncIterator[encoder_pb2.ImageBatch]:
        yield encoder_pb2.ImageBatch(
            items=[encoder_pb2.ImageItem(id=str(i), data=GOOD) for i in range(MAX_ITEMS + 1)]
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in limited_stub.StreamEmbedImages(requests()):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_ITEMS}" in (caught.value.details() or "")


async def test_calls_before_the_model_is_loaded_are_unavailable(tiny_checkpoint: Path) -> None:
    server = EncoderServer(
        EncoderSettings(checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0)
    )
    await server.start()  # bound, model not loaded yet
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await encoder_pb2_grpc.EncoderStub(channel).EmbedText(
                    encoder_pb2.EmbedTextRequest(texts=["one"])
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
