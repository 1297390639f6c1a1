"""The gRPC Search service end to end, on the same core as HTTP (real encoder, embedded store)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench.stack import free_port
from clipsearch.v1 import search_pb2, search_pb2_grpc
from services.gateway.deps import build_core
from services.gateway.grpc_server import SERVICE_NAME, running_grpc_server
from tests.gateway.conftest import COLLECTION, Indexed, digit_png, settings_for

StubFactory = Callable[..., AbstractAsyncContextManager[search_pb2_grpc.SearchStub]]


@asynccontextmanager
async def _serve(indexed: Indexed, encoder: str, **overrides: object) -> AsyncIterator[grpc.aio.Channel]:
    settings = settings_for(indexed, encoder, host="127.0.0.1", grpc_port=0, **overrides)
    core = build_core(settings)
    try:
        async with (
            running_grpc_server(core, settings) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield channel
    finally:
        await core.close()


@pytest.fixture
def search(indexed: Indexed, encoder_target: str) -> StubFactory:
    @asynccontextmanager
    async def open_stub(**overrides: object) -> AsyncIterator[search_pb2_grpc.SearchStub]:
        async with _serve(indexed, encoder_target, **overrides) as channel:
            yield search_pb2_grpc.SearchStub(channel)

    return open_stub


async def _health_once_serving(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse:
    """The Search service's health once a readiness check passed (it starts NOT_SERVING)."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    async for reply in stub.Watch(request, timeout=15):
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return reply
    raise AssertionError("the health watch ended")


def _filter(spec: dict[str, object]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(spec)
    return value


async def test_search_rpcs_answer_like_http(search: StubFactory, indexed: Indexed) -> None:
    item = indexed.items[7]
    async with search() as stub:
        text = await stub.SearchText(
            search_pb2.TextQuery(query="a seven", options=search_pb2.QueryOptions(k=4))
        )
        default_k = await stub.SearchText(search_pb2.TextQuery(query="a seven"))
        image = await stub.SearchImage(search_pb2.ImageQuery(image=item.png))
        sketch = await stub.SearchSketch(search_pb2.ImageQuery(image=digit_png(7, sketch=True, size=200)))
        filtered = await stub.SearchText(
            search_pb2.TextQuery(
                query="digit", options=search_pb2.QueryOptions(k=10, filter=_filter({"label": [2, 5]}))
            )
        )
        mixed = await stub.SearchMixed(
            search_pb2.MixedQuery(
                parts=[
                    search_pb2.QueryPart(image=item.png, weight=1.0),
                    search_pb2.QueryPart(text="seven", weight=0.2),
                    search_pb2.QueryPart(sketch=digit_png(1, sketch=True), weight=-0.2),
                ]
            )
        )
    assert len(text.hits) == 4
    assert text.model == indexed.model_name
    assert text.collection == COLLECTION
    assert len(default_k.hits) == 10
    assert image.hits[0].id == item.id
    assert image.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert image.hits[0].payload["label"] == item.label
    assert image.hits[0].image_url == f"/api/v1/media/{item.media_key}"
    assert len(sketch.hits) == 10
    assert {int(hit.payload["label"]) for hit in filtered.hits} == {2, 5}
    assert len(mixed.hits) == 10


async def test_classify_rpc(search: StubFactory) -> None:
    async with search() as stub:
        reply = await stub.Classify(
            search_pb2.ClassifyRequest(sketch=digit_png(3, sketch=True), labels=["three", "eight", "one"])
        )
    assert sorted(score.label for score in reply.scores) == ["eight", "one", "three"]
    assert sum(score.probability for score in reply.scores) == pytest.approx(1.0, abs=1e-5)
    assert [s.probability for s in reply.scores] == sorted(
        (s.probability for s in reply.scores), reverse=True
    )


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda stub: stub.SearchText(search_pb2.TextQuery(query=" ")), "empty"),
        (
            lambda stub: stub.SearchText(
                search_pb2.TextQuery(query="a", options=search_pb2.QueryOptions(k=500))
            ),
            "k must be",
        ),
        (
            lambda stub: stub.SearchText(
                search_pb2.TextQuery(query="a", options=search_pb2.QueryOptions(filter=_filter({"shape": 1})))
            ),
            "unknown filter field",
        ),
        (
            lambda stub: stub.SearchText(
                search_pb2.TextQuery(
                    query="a", options=search_pb2.QueryOptions(target=search_pb2.TARGET_CAPTIONS)
                )
            ),
            "no captions vectors",
        ),
        (lambda stub: stub.SearchImage(search_pb2.ImageQuery(image=b"garbage")), "image"),
        (lambda stub: stub.SearchSketch(search_pb2.ImageQuery()), "empty"),
        (lambda stub: stub.SearchMixed(search_pb2.MixedQuery()), "at least one part"),
        (
            lambda stub: stub.SearchMixed(search_pb2.MixedQuery(parts=[search_pb2.QueryPart(weight=2)])),
            "no text",
        ),
        (lambda stub: stub.Classify(search_pb2.ClassifyRequest(labels=["a"])), "image or a sketch"),
        (lambda stub: stub.Classify(search_pb2.ClassifyRequest(image=digit_png(1))), "at least one"),
    ],
)
async def test_user_mistakes_are_invalid_argument(
    search: StubFactory, call: Callable[[search_pb2_grpc.SearchStub], object], fragment: str
) -> None:
    async with search() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(stub)  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (caught.value.details() or "")


async def test_encoder_down_is_unavailable(indexed: Indexed) -> None:
    async with _serve(indexed, f"127.0.0.1:{free_port()}", encoder_timeout_s=1.0) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchText(search_pb2.TextQuery(query="seven"))
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "encoder" in (caught.value.details() or "")
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_reflection_and_api_key(indexed: Indexed, encoder_target: str) -> None:
    async with _serve(indexed, encoder_target, api_key="k3y") as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        health = await _health_once_serving(channel)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = [
            reply
            async for reply in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.SearchText(search_pb2.TextQuery(query="one"))
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.SearchText(search_pb2.TextQuery(query="one"), metadata=(("x-api-key", "nope"),))
        right = await stub.SearchText(search_pb2.TextQuery(query="one"), metadata=(("x-api-key", "k3y"),))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    services = {service.name for service in listed[0].list_services_response.service}
    assert SERVICE_NAME in services
    assert "grpc.health.v1.Health" in services
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(right.hits) == 10
