"""The Encoder service on a real loopback server: health, reflection, embeddings, batching, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clipsearch.checkpoint import weights_fingerprint
from clipsearch.encoder_client import EncoderClient, embeddings_to_array
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import EncoderServer
from tests.encoder.conftest import digit_image, sketch_png

TINY_DIM = 16


async def test_health_is_serving_for_server_and_service(encoder_target: str) -> None:
    async with grpc.aio.insecure_channel(encoder_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "clipsearch.v1.Encoder"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_encoder_and_health(encoder_target: str) -> None:
    async with grpc.aio.insecure_channel(encoder_target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for reply in reflection.ServerReflectionInfo(one_request()):
            names |= {service.name for service in reply.list_services_response.service}
    assert {"clipsearch.v1.Encoder", "grpc.health.v1.Health"} <= names


async def test_model_info_describes_the_checkpoint(
    stub: encoder_pb2_grpc.EncoderStub, tiny_checkpoint
) -> None:  # type: ignore[no-untyped-def]
    info = await stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
    assert info.model_name == tiny_checkpoint.name
    assert info.fingerprint == weights_fingerprint(tiny_checkpoint)
    assert info.embedding_dim == TINY_DIM
    assert info.image_size == 28
    assert info.dtype == "float32"
    assert info.device == "cpu"
    assert info.sketch_normalization == "mnist"
    assert info.logit_scale > 0
    assert info.max_text_tokens == 32
    assert info.max_batch_items == 256
    assert info.architecture == "clip"


async def test_embeddings_are_unit_vectors_of_model_dim_and_deterministic(
    stub: encoder_pb2_grpc.EncoderStub,
) -> None:
    info = await stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
    requests = [
        (stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=["a photo of a seven", "two"])),
        (stub.EmbedImages, encoder_pb2.EmbedImagesRequest(images=[digit_image(1), digit_image(2)])),
        (stub.EmbedSketches, encoder_pb2.EmbedSketchesRequest(sketches=[sketch_png(0), sketch_png(9)])),
    ]
    for method, request in requests:
        first, second = await method(request), await method(request)  # type: ignore[operator]
        assert first.model_fingerprint == info.fingerprint
        vectors = embeddings_to_array(first.embeddings)
        assert vectors.shape == (2, TINY_DIM)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert not np.allclose(vectors[0], vectors[1])  # different inputs, different vectors
        np.testing.assert_array_equal(vectors, embeddings_to_array(second.embeddings))


async def test_async_client_round_trip(encoder_target: str) -> None:
    async with EncoderClient(encoder_target) as client:
        assert await client.serving()
        texts = await client.embed_texts(["three", "eight"])
        images = await client.embed_images([digit_image(3)])
    assert texts.shape == (2, TINY_DIM)
    assert images.shape == (1, TINY_DIM)


def _batch_count(server: EncoderServer, kind: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "clipsearch_encoder_batch_size_count", {"model": "tiny-clip", "kind": kind}
    )
    return value or 0.0


async def test_concurrent_single_requests_are_batched_and_match_one_by_one(
    limited_server: EncoderServer, limited_stub: encoder_pb2_grpc.EncoderStub
) -> None:
    images = [digit_image(seed) for seed in range(12)]
    texts = [f"{'a photo of ' * (seed % 4)}digit {seed}" for seed in range(12)]  # different lengths pad
    alone_images = [
        embeddings_to_array(
            (await limited_stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[i]))).embeddings
        )
        for i in images
    ]
    alone_texts = [
        embeddings_to_array(
            (await limited_stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=[t]))).embeddings
        )
        for t in texts
    ]
    image_batches, text_batches = _batch_count(limited_server, "image"), _batch_count(limited_server, "text")

    together_images, together_texts = await asyncio.gather(
        asyncio.gather(
            *[limited_stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[i])) for i in images]
        ),
        asyncio.gather(*[limited_stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=[t])) for t in texts]),
    )

    for alone, reply in zip(alone_images + alone_texts, together_images + together_texts, strict=True):
        np.testing.assert_allclose(embeddings_to_array(reply.embeddings), alone, atol=1e-5)
    # 12 concurrent calls of each kind shared fewer than 12 forward passes.
    assert _batch_count(limited_server, "image") - image_batches < len(images)
    assert _batch_count(limited_server, "text") - text_batches < len(texts)


async def test_stream_reports_bad_items_inline_and_embeds_good_ones(
    stub: encoder_pb2_grpc.EncoderStub,
) -> None:
    good = [digit_image(4), digit_image(5), digit_image(6)]
    batches = [
        encoder_pb2.ImageBatch(
            items=[
                encoder_pb2.ImageItem(id="good-0", data=good[0]),
                encoder_pb2.ImageItem(id="garbage", data=b"not an image"),
                encoder_pb2.ImageItem(id="empty", data=b""),
                encoder_pb2.ImageItem(id="good-1", data=good[1]),
            ]
        ),
        encoder_pb2.ImageBatch(items=[encoder_pb2.ImageItem(id="good-2", data=good[2])]),
        encoder_pb2.ImageBatch(items=[encoder_pb2.ImageItem(id="bad-only", data=b"\x89PNG broken")]),
    ]

    async def requests() -> AsyncIterator[encoder_pb2.ImageBatch]:
        for batch in batches:
            yield batch

    replies = [reply async for reply in stub.StreamEmbedImages(requests())]
    expected = embeddings_to_array(
        (await stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=good))).embeddings
    )

    assert [[r.id for r in reply.results] for reply in replies] == [[i.id for i in b.items] for b in batches]
    results = {r.id: r for reply in replies for r in reply.results}
    for position, item_id in enumerate(["good-0", "good-1", "good-2"]):
        assert not results[item_id].error
        np.testing.assert_allclose(results[item_id].embedding.values, expected[position], atol=1e-5)
    for item_id in ("garbage", "empty", "bad-only"):
        assert results[item_id].error
        assert not results[item_id].HasField("embedding")
    assert "not a recognised image format" in results["garbage"].error
    assert all(reply.model_fingerprint for reply in replies)
