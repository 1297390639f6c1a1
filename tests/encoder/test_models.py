"""One encoder serving two models on loopback: routing by name or fingerprint, refusals, ListModels,
per-model health and batching, streams, and image queries brought into the model's domain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from clipsearch.checkpoint import CheckpointError, load_checkpoint, weights_fingerprint
from clipsearch.embedder import Embedder
from clipsearch.encoder_client import (
    EncoderClient,
    EncoderInputError,
    EncoderModelNotFound,
    ImageNormalization,
    embeddings_to_array,
    model_health_service,
)
from clipsearch.preprocess import SketchNormalization, decode_image, decode_sketch
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import EncoderServer, serve_in_thread
from services.encoder.settings import EncoderSettings
from tests.conftest import TWO_MODELS
from tests.encoder.conftest import digit_image, png, sketch_png
from tests.test_image_domain import mnist_like, printed_digit

NAMES = TWO_MODELS
TEXTS = ["a handwritten seven", "two"]


@pytest.fixture(scope="session")
def two_models(tiny_checkpoint: Path, other_tiny_checkpoint: Path) -> dict[str, Path]:
    return {"first": tiny_checkpoint, "second": other_tiny_checkpoint}


@pytest.fixture(scope="session")
def reference(two_models: dict[str, Path]) -> dict[str, Embedder]:
    """Each model embedded in this process, as the server should."""
    return {name: Embedder.from_checkpoint(load_checkpoint(path)) for name, path in two_models.items()}


@pytest.fixture
def target(two_model_encoder: EncoderServer) -> str:
    return f"127.0.0.1:{two_model_encoder.port}"


@pytest.fixture
async def stub(target: str) -> AsyncIterator[encoder_pb2_grpc.EncoderStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)


def expected(embedder: Embedder, kind: str, items: list[Any]) -> np.ndarray:
    if kind == "text":
        return embedder.embed_texts(items)
    if kind == "image":
        return embedder.embed_images([decode_image(data) for data in items])
    return embedder.embed_images([decode_sketch(data, SketchNormalization.MNIST) for data in items])


KINDS: dict[str, list[Any]] = {
    "text": TEXTS,
    "image": [digit_image(1), digit_image(2)],
    "sketch": [sketch_png(0), sketch_png(9)],
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("by", ["name", "fingerprint"])
async def test_each_call_embeds_with_the_model_it_names(
    target: str, two_models: dict[str, Path], reference: dict[str, Embedder], kind: str, by: str
) -> None:
    async with EncoderClient(target) as client:
        answers = {}
        for name, path in two_models.items():
            model = name if by == "name" else weights_fingerprint(path)
            # OFF: these digits are MNIST-like; the comparison is about routing, not the domain.
            answers[name] = await client.embed(
                kind, KINDS[kind], model=model, normalization=ImageNormalization.OFF
            )
    for name, path in two_models.items():
        assert answers[name].fingerprint == weights_fingerprint(path)
        np.testing.assert_allclose(
            answers[name].vectors, expected(reference[name], kind, KINDS[kind]), atol=1e-5
        )
    assert not np.allclose(answers["first"].vectors, answers["second"].vectors)  # two models, two spaces


async def test_concurrent_calls_to_both_models_are_batched_per_model(
    target: str, two_model_encoder: EncoderServer, reference: dict[str, Embedder]
) -> None:
    texts = [f"digit {seed}" for seed in range(8)]

    def batches(model: str) -> float:
        value = two_model_encoder.metrics.registry.get_sample_value(
            "clipsearch_encoder_batch_size_count", {"model": model, "kind": "text"}
        )
        return value or 0.0

    before = {name: batches(name) for name in NAMES}
    async with EncoderClient(target) as client:
        answers = await asyncio.gather(
            *(client.embed_texts([text], model=name) for text in texts for name in NAMES)
        )
    for (text, name), answer in zip(((t, n) for t in texts for n in NAMES), answers, strict=True):
        np.testing.assert_allclose(answer, reference[name].embed_texts([text]), atol=1e-5)
    for name in NAMES:  # each model ran its own batches, fewer than its calls
        assert 0 < batches(name) - before[name] < len(texts)


UNNAMED: list[tuple[str, Any]] = [
    ("EmbedText", encoder_pb2.EmbedTextRequest(texts=["one"])),
    ("EmbedImages", encoder_pb2.EmbedImagesRequest(images=[digit_image(0)])),
    ("EmbedSketches", encoder_pb2.EmbedSketchesRequest(sketches=[sketch_png()])),
    ("GetModelInfo", encoder_pb2.GetModelInfoRequest()),
]


@pytest.mark.parametrize(("method", "request_message"), UNNAMED, ids=[m for m, _ in UNNAMED])
async def test_an_unnamed_call_is_refused_naming_the_choices(
    stub: encoder_pb2_grpc.EncoderStub, method: str, request_message: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(name in (caught.value.details() or "") for name in NAMES)


@pytest.mark.parametrize(("method", "request_message"), UNNAMED, ids=[m for m, _ in UNNAMED])
async def test_an_unknown_model_is_not_found_naming_the_served_ones(
    stub: encoder_pb2_grpc.EncoderStub, method: str, request_message: Any
) -> None:
    request_message = type(request_message).FromString(request_message.SerializeToString())
    request_message.model = "third"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_message)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert "'third'" in details
    assert all(name in details for name in NAMES)


async def test_client_errors_tell_a_missing_model_from_bad_input(target: str) -> None:
    async with EncoderClient(target, retries=0) as client:
        with pytest.raises(EncoderModelNotFound, match="third"):
            await client.embed_texts(["one"], model="third")
        with pytest.raises(EncoderInputError, match="first, second"):
            await client.embed_texts(["one"])


async def test_list_models_and_model_info_describe_each_model(
    target: str, two_models: dict[str, Path]
) -> None:
    async with EncoderClient(target) as client:
        listed = await client.list_models()
        by_name = {name: await client.model_info(name) for name in NAMES}
        by_fingerprint = {
            name: await client.model_info(weights_fingerprint(path)) for name, path in two_models.items()
        }
    assert [info.name for info in listed] == list(NAMES)
    for info in listed:
        assert info.fingerprint == weights_fingerprint(two_models[info.name])
        assert info.model_name == two_models[info.name].name
        assert info.embedding_dim == 16
        assert info.sketch_normalization == "mnist"
        assert by_name[info.name] == info == by_fingerprint[info.name]


async def test_health_per_model_and_overall(target: str, two_models: dict[str, Path]) -> None:
    services = ["", "clipsearch.v1.Encoder"] + [
        model_health_service(model)
        for name, path in two_models.items()
        for model in (name, weights_fingerprint(path))
    ]
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in services:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service=model_health_service("third")))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    async with EncoderClient(target) as client:
        assert await client.serving("second")
        assert not await client.serving("third")


def _batches(*models: str) -> list[encoder_pb2.ImageBatch]:
    return [
        encoder_pb2.ImageBatch(
            items=[encoder_pb2.ImageItem(id=f"{n}-{i}", data=digit_image(n + i)) for i in range(2)],
            model=model,
        )
        for n, model in enumerate(models)
    ]


async def _stream(stub: encoder_pb2_grpc.EncoderStub, batches: list[encoder_pb2.ImageBatch]) -> list[Any]:
    async def requests() -> AsyncIterator[encoder_pb2.ImageBatch]:
        for batch in batches:
            yield batch

    return [reply async for reply in stub.StreamEmbedImages(requests())]


async def test_stream_embeds_with_the_model_its_batches_name(
    stub: encoder_pb2_grpc.EncoderStub, two_models: dict[str, Path], reference: dict[str, Embedder]
) -> None:
    batches = _batches("second", "second")
    replies = await _stream(stub, batches)
    for batch, reply in zip(batches, replies, strict=True):
        assert reply.model_fingerprint == weights_fingerprint(two_models["second"])
        got = np.asarray([result.embedding.values for result in reply.results])
        np.testing.assert_allclose(
            got, expected(reference["second"], "image", [item.data for item in batch.items]), atol=1e-5
        )


@pytest.mark.parametrize(
    ("models", "code", "message"),
    [
        (("",), grpc.StatusCode.INVALID_ARGUMENT, "first, second"),
        (("third",), grpc.StatusCode.NOT_FOUND, "third"),
        (("first", "second"), grpc.StatusCode.INVALID_ARGUMENT, "this stream embeds with 'first'"),
    ],
    ids=["unnamed", "unknown", "switching"],
)
async def test_stream_refuses_an_unnamed_unknown_or_changing_model(
    stub: encoder_pb2_grpc.EncoderStub, models: tuple[str, ...], code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream(stub, _batches(*models))
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")


# Image queries brought into the model's domain (the tiny models record the "mnist" normalisation).


async def test_auto_leaves_mnist_like_images_alone(target: str) -> None:
    images = [png(mnist_like(28)), png(mnist_like(280))]
    async with EncoderClient(target) as client:
        auto = await client.embed("image", images, model="first")
        off = await client.embed("image", images, model="first", normalization=ImageNormalization.OFF)
    assert auto.normalizations == ["none", "none"] == off.normalizations
    np.testing.assert_array_equal(auto.vectors, off.vectors)


async def test_auto_normalises_a_digit_on_paper_as_a_sketch_and_off_never_does(target: str) -> None:
    photo = png(printed_digit())
    async with EncoderClient(target) as client:
        auto = await client.embed("image", [photo, png(mnist_like())], model="first")
        off = await client.embed("image", [photo], model="first", normalization=ImageNormalization.OFF)
        sketch = await client.embed("sketch", [photo], model="first")
    assert auto.normalizations == ["mnist", "none"]
    assert off.normalizations == ["none"]
    assert sketch.normalizations == ["mnist"]
    np.testing.assert_allclose(auto.vectors[0], sketch.vectors[0], atol=1e-6)  # the sketch path's input
    assert not np.allclose(auto.vectors[0], off.vectors[0])


async def test_stream_embeds_images_as_they_are(stub: encoder_pb2_grpc.EncoderStub, target: str) -> None:
    photo = png(printed_digit())
    batch = encoder_pb2.ImageBatch(items=[encoder_pb2.ImageItem(id="photo", data=photo)], model="first")
    (reply,) = await _stream(stub, [batch])
    async with EncoderClient(target) as client:
        off = await client.embed("image", [photo], model="first", normalization=ImageNormalization.OFF)
    np.testing.assert_allclose(reply.results[0].embedding.values, off.vectors[0], atol=1e-6)


async def test_embed_images_over_raw_grpc_reports_the_normalisation(
    stub: encoder_pb2_grpc.EncoderStub,
) -> None:
    reply = await stub.EmbedImages(
        encoder_pb2.EmbedImagesRequest(images=[png(printed_digit()), png(mnist_like())], model="second")
    )
    assert list(reply.normalizations) == ["mnist", "none"]
    assert embeddings_to_array(reply.embeddings).shape == (2, 16)
    text = await stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=["one"], model="second"))
    assert list(text.normalizations) == []


# Settings and start-up.


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("a=x,a=y", "given twice"),
        ("a=x,b", "is not NAME=CHECKPOINT"),
        ("=x", "model name ''"),
        ("a b=x", "model name 'a b'"),
        ("a/b=x", "model name 'a/b'"),
        (",", "no models given"),
        ("0" * 64 + "=x", "looks like a fingerprint"),
    ],
)
def test_bad_model_lists_are_refused_with_a_message(models: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EncoderSettings(models=models)


def test_models_replace_the_checkpoint_and_an_empty_list_means_the_checkpoint() -> None:
    assert [s.name for s in EncoderSettings(models="a=x", checkpoint="y").model_sources()] == ["a"]
    assert [s.checkpoint for s in EncoderSettings(models=" ", checkpoint="y").model_sources()] == ["y"]


def test_the_one_model_form_serves_the_checkpoint_under_its_directory_name(tiny_checkpoint: Path) -> None:
    (source,) = EncoderSettings(checkpoint=str(tiny_checkpoint)).model_sources()
    assert (source.name, source.checkpoint) == (tiny_checkpoint.name, str(tiny_checkpoint))


@pytest.mark.parametrize("broken", ["missing", "same weights"])
def test_a_model_that_cannot_be_served_fails_the_start_naming_it(
    tiny_checkpoint: Path, tmp_path: Path, broken: str
) -> None:
    other = tmp_path / "nowhere" if broken == "missing" else tiny_checkpoint
    settings = EncoderSettings(
        models=f"good={tiny_checkpoint},bad={other}", host="127.0.0.1", port=0, metrics_enabled=False
    )
    with pytest.raises(CheckpointError, match="bad"), serve_in_thread(settings):
        pass


def test_auto_is_the_default_normalisation_on_the_wire() -> None:
    # An old client that sets no normalisation gets AUTO: the proto's zero value.
    assert encoder_pb2.EmbedImagesRequest().normalization == ImageNormalization.AUTO
