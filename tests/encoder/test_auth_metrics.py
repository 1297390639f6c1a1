"""API key enforcement and the Prometheus side port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipsearch.encoder_client import EncoderClient
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import EncoderServer, serve_in_thread
from services.encoder.settings import EncoderSettings
from tests.encoder.conftest import digit_image

API_KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def keyed_server(tiny_checkpoint: Path) -> Iterator[EncoderServer]:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0, api_key=API_KEY
    )
    with serve_in_thread(settings) as server:
        yield server


@pytest.mark.parametrize("metadata", [None, (("x-api-key", "wrong"),), (("x-api-key", ""),)])
async def test_calls_without_the_right_key_are_unauthenticated(
    keyed_server: EncoderServer, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed_server.port}") as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=["one"]), metadata=metadata)
        # No request messages: a client still writing when the server refuses sees its own
        # write fail (INTERNAL, a grpc-python client quirk) instead of the server's status.
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in stub.StreamEmbedImages(iter([]), metadata=metadata):
                pass
    assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert API_KEY not in (unary.value.details() or "")


async def test_the_right_key_is_accepted_and_health_stays_open(keyed_server: EncoderServer) -> None:
    target = f"127.0.0.1:{keyed_server.port}"
    async with EncoderClient(target, api_key=API_KEY) as client:
        vectors = await client.embed_texts(["one"])
        info = await client.model_info()
    assert vectors.shape == (1, info.embedding_dim)
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_metrics_endpoint_counts_requests_items_and_batches(
    keyed_server: EncoderServer, tiny_checkpoint: Path
) -> None:
    async with EncoderClient(f"127.0.0.1:{keyed_server.port}", api_key=API_KEY) as client:
        await client.embed_images([digit_image(1), digit_image(2)])
        await client.embed_texts(["one", "two", "three"])
    assert keyed_server.metrics_port
    async with httpx.AsyncClient() as http:
        page = (await http.get(f"http://127.0.0.1:{keyed_server.metrics_port}/metrics")).text

    def value(name: str, labels: str) -> float:
        line = next(line for line in page.splitlines() if line.startswith(f"{name}{{{labels}}}"))
        return float(line.rsplit(" ", 1)[1])

    assert value("clipsearch_encoder_requests_total", 'code="OK",method="EmbedImages"') >= 1
    assert value("clipsearch_encoder_requests_total", 'code="OK",method="EmbedText"') >= 1
    model = f'model="{tiny_checkpoint.name}"'
    assert value("clipsearch_encoder_items_total", f'kind="image",{model}') >= 2
    assert value("clipsearch_encoder_items_total", f'kind="text",{model}') >= 3
    assert value("clipsearch_encoder_batch_size_count", f'kind="image",{model}') >= 1
    assert value("clipsearch_encoder_request_latency_seconds_count", 'method="EmbedText"') >= 1


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_PORT", "6000")
    monkeypatch.setenv("ENCODER_BATCHING", "false")
    monkeypatch.setenv("ENCODER_API_KEY", "")
    settings = EncoderSettings()
    assert (settings.port, settings.batching, settings.api_key) == (6000, False, None)
    monkeypatch.setenv("ENCODER_API_KEY", "s3cret-value")
    assert "s3cret-value" not in repr(EncoderSettings())  # the key never shows in logs or reprs
