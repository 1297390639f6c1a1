"""Hardening fixtures: the gateway's indexed test collection, a served app, gRPC servers in threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clipsearch.v1 import encoder_pb2_grpc, search_pb2_grpc
from services.gateway.app import create_app
from services.gateway.deps import build_core
from services.gateway.grpc_server import GrpcGateway
from services.gateway.http_limits import uvicorn_options
from services.gateway.settings import GatewaySettings
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import Indexed, settings_for
from tests.hardening import stalls, test_memory
from tests.hardening.tally import TALLY

# The gateway tests' indexed collection (digits through the real encoder), shared here.
indexed = gateway_fixtures.indexed

# Small enough that the fuzz tests reach the upload cap with little data.
MAX_UPLOAD_BYTES = 256 * 1024


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long load test (CLIPSEARCH_SOAK_SECONDS, default 60)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.distinct():
        terminalreporter.write_sep("-", "hardening fuzz")
        terminalreporter.write_line(TALLY.summary())
    if stalls.REPORTS:
        terminalreporter.write_line(stalls.summary())
    if test_memory.GROWTHS:
        terminalreporter.write_line(test_memory.summary())


def hardening_settings(indexed: Indexed, encoder: str, **overrides: object) -> GatewaySettings:
    return settings_for(indexed, encoder, max_upload_bytes=MAX_UPLOAD_BYTES, **overrides)


@pytest.fixture(scope="module")
def http(indexed: Indexed, encoder_target: str) -> Iterator[TestClient]:
    """The real gateway app (lifespan running) over the indexed collection and the real encoder."""
    app = create_app(hardening_settings(indexed, encoder_target))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@contextmanager
def search_server_in_thread(settings: GatewaySettings) -> Iterator[int]:
    """The gateway's gRPC Search server on its own event loop in a thread; yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="search-grpc", daemon=True)
    thread.start()

    async def start() -> tuple[GrpcGateway, int]:
        gateway = GrpcGateway(build_core(settings), settings)
        return gateway, await gateway.start()

    async def stop(gateway: GrpcGateway) -> None:
        await gateway.stop(0.5)
        await gateway.core.close()

    try:
        gateway, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        try:
            yield port
        finally:
            asyncio.run_coroutine_threadsafe(stop(gateway), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def search_port(indexed: Indexed, encoder_target: str) -> Iterator[int]:
    """The gateway's gRPC Search server in a thread; yields its port."""
    settings = hardening_settings(indexed, encoder_target, host="127.0.0.1", grpc_port=0)
    with search_server_in_thread(settings) as port:
        yield port


@pytest.fixture(scope="module")
def search_stub(search_port: int) -> Iterator[search_pb2_grpc.SearchStub]:
    with grpc.insecure_channel(f"127.0.0.1:{search_port}") as channel:
        yield search_pb2_grpc.SearchStub(channel)


@pytest.fixture(scope="module")
def encoder_stub(encoder_target: str) -> Iterator[encoder_pb2_grpc.EncoderStub]:
    with grpc.insecure_channel(encoder_target) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)


# Limits of the live HTTP server, small where a test must reach them quickly.
LIVE_HTTP_LIMITS: dict[str, object] = {
    "http_header_timeout_s": 1.0,
    "http_body_timeout_s": 1.0,
    "http_max_connections": 32,
    "http_keepalive_s": 2.0,
}


@contextmanager
def uvicorn_in_thread(app: FastAPI, settings: GatewaySettings) -> Iterator[int]:
    """The app behind the gateway's real HTTP server (uvicorn, its limits) on a loopback port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def live_http(indexed: Indexed, encoder_target: str) -> Iterator[int]:
    """The gateway's HTTP server on a loopback port; yields the port."""
    settings = hardening_settings(indexed, encoder_target, **LIVE_HTTP_LIMITS)
    with uvicorn_in_thread(create_app(settings), settings) as port:
        yield port
