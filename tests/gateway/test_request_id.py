"""Request ids: the gateway gives each HTTP request and gRPC call one (or keeps a valid one the
client sent), returns it, sends it to the encoder as metadata, and both log it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import httpx
import pytest

from clipsearch.logs import configure_logging, valid_request_id
from clipsearch.processes import free_port
from clipsearch.v1 import search_pb2, search_pb2_grpc
from services.gateway.app import create_app
from services.gateway.deps import build_core
from services.gateway.grpc_server import running_grpc_server
from tests.gateway.conftest import Indexed, serving, settings_for
from tests.processes import encoder_env, gateway_env, start

API = "/api/v1"


@pytest.fixture
def debug_logs(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """Every record at DEBUG as JSON lines on stderr (the in-process encoder's too), as a service logs."""
    configure_logging("DEBUG", "json")
    capsys.readouterr()
    return capsys


def _records(err: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def _encoder_calls(records: list[dict[str, str]]) -> dict[str, str]:
    """request id -> the encoder method it reached, from the encoder's per-call log lines."""
    return {
        r["request_id"]: r["message"].split()[0]
        for r in records
        if r["logger"] == "clipsearch.grpc_request_id"
        and "/clipsearch.v1.Encoder/" in r["message"]
        and "request_id" in r  # readiness checks run outside any request
    }


async def test_http_requests_get_an_id_that_reaches_the_encoder(
    indexed: Indexed, encoder_target: str, debug_logs: pytest.CaptureFixture[str]
) -> None:
    async with serving(create_app(settings_for(indexed, encoder_target))) as client:
        given = await client.post(
            f"{API}/search/text",
            json={"query": "a handwritten three"},
            headers={"X-Request-ID": "client-7f3a"},
        )
        made = await client.post(f"{API}/search/text", json={"query": "a handwritten five"})
        forged = await client.post(
            f"{API}/search/text", json={"query": "a handwritten six"}, headers={"X-Request-ID": "two words"}
        )
        refused = await client.post(f"{API}/search/text", json={"k": 3})
    assert [r.status_code for r in (given, made, forged, refused)] == [200, 200, 200, 422]
    assert given.headers["x-request-id"] == "client-7f3a"
    generated = made.headers["x-request-id"]
    assert valid_request_id(generated)
    assert forged.headers["x-request-id"] not in ("two words", generated)
    assert valid_request_id(refused.headers["x-request-id"])
    records = _records(debug_logs.readouterr().err)
    reached = _encoder_calls(records)
    for request_id in ("client-7f3a", generated, forged.headers["x-request-id"]):
        assert reached.get(request_id) == "/clipsearch.v1.Encoder/EmbedText", (request_id, reached)
    gateway_lines = [r for r in records if r["logger"] == "services.gateway.app"]
    assert {"client-7f3a", generated} <= {r.get("request_id") for r in gateway_lines}


async def test_grpc_calls_get_an_id_in_the_trailing_metadata_that_reaches_the_encoder(
    indexed: Indexed, encoder_target: str, debug_logs: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(indexed, encoder_target, host="127.0.0.1", grpc_port=0)
    core = build_core(settings)
    try:
        async with (
            running_grpc_server(core, settings) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = search_pb2_grpc.SearchStub(channel)
            given = stub.SearchText(
                search_pb2.TextQuery(query="a handwritten eight"), metadata=(("x-request-id", "grpc-51c2"),)
            )
            await given
            made = stub.SearchText(search_pb2.TextQuery(query="a handwritten nine"))
            await made
    finally:
        await core.close()
    assert dict(await given.trailing_metadata())["x-request-id"] == "grpc-51c2"
    generated = dict(await made.trailing_metadata())["x-request-id"]
    assert valid_request_id(generated)
    reached = _encoder_calls(_records(debug_logs.readouterr().err))
    assert reached.get("grpc-51c2") == "/clipsearch.v1.Encoder/EmbedText"
    assert reached.get(generated) == "/clipsearch.v1.Encoder/EmbedText"


@pytest.mark.slow
def test_the_request_id_reaches_the_encoder_process_log(
    indexed: Indexed, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    store = tmp_path / "qdrant"
    shutil.copytree(indexed.store_path, store)  # the gateway process locks its own copy
    encoder_port, http_port = free_port(), free_port()
    encoder = start(
        "services.encoder",
        encoder_env(tiny_checkpoint, encoder_port, ENCODER_LOG_LEVEL="debug"),
        tmp_path / "encoder.log",
    )
    gateway = start(
        "services.gateway",
        gateway_env(
            encoder_port,
            store,
            indexed.media_dir,
            http_port,
            GATEWAY_LOG_LEVEL="debug",
            GATEWAY_LOG_FORMAT="json",
        ),
        tmp_path / "gateway.log",
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        encoder.wait_grpc_serving(f"127.0.0.1:{encoder_port}")
        gateway.wait_http_ready(f"{url}/readyz")
        given = httpx.post(
            f"{url}{API}/search/text",
            json={"query": "seven"},
            headers={"X-Request-ID": "e2e-0c1d"},
            timeout=30,
        )
        made = httpx.post(f"{url}{API}/search/text", json={"query": "four"}, timeout=30)
    finally:
        gateway.stop()
        encoder.stop()
    assert (given.status_code, made.status_code) == (200, 200)
    assert given.headers["x-request-id"] == "e2e-0c1d"
    generated = made.headers["x-request-id"]
    encoder_lines = encoder.output().splitlines()
    for request_id in ("e2e-0c1d", generated):
        assert any(
            f"[{request_id}]: /clipsearch.v1.Encoder/EmbedText OK" in line for line in encoder_lines
        ), (
            request_id,
            encoder_lines[-20:],
        )
    gateway_records = _records(gateway.output())
    assert gateway_records, gateway.output()[-2000:]
    assert {"e2e-0c1d", generated} <= {r.get("request_id") for r in gateway_records}
    assert any(r["logger"].startswith("uvicorn") for r in gateway_records)  # its records are JSON too
