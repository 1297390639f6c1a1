"""Load: expired calls are dropped rather than queued, and a soak of the full stack as processes."""

from __future__ import annotations

import asyncio
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from clipsearch.batching import MicroBatcher, on_executor
from clipsearch.processes import free_port, rss_kib
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc, search_pb2, search_pb2_grpc
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from services.gateway.app import create_app
from tests.gateway.conftest import Indexed, build_index, digit_png
from tests.hardening.conftest import hardening_settings, search_server_in_thread
from tests.processes import encoder_env, gateway_env, start

SOAK_SECONDS = float(os.environ.get("CLIPSEARCH_SOAK_SECONDS", "60"))
SOAK_CLIENTS = 16
MAX_RSS_GROWTH = 0.10
GATEWAY_KEY = "soak-gateway-key-61c0"
ENCODER_KEY = "soak-encoder-key-2b7d"


async def test_the_batcher_skips_work_whose_caller_gave_up() -> None:
    seen: list[float] = []

    def embed(items: list[float]) -> np.ndarray:
        seen.extend(items)
        return np.asarray(items, dtype=np.float32)[:, None]

    with ThreadPoolExecutor(1) as inference:
        batcher: MicroBatcher[float] = MicroBatcher(
            on_executor(embed, inference), max_batch_size=8, max_wait_ms=50.0
        )
        batcher.start()
        try:
            expired = [asyncio.ensure_future(batcher.submit([float(i)])) for i in range(5)]
            kept = asyncio.ensure_future(batcher.submit([99.0]))
            await asyncio.sleep(0)
            for call in expired:
                call.cancel()  # what grpc does to a handler whose deadline passed
            rows = await kept
        finally:
            await batcher.close()
    assert float(rows[0, 0]) == 99.0
    assert seen == [99.0]


async def test_short_deadlines_under_overload_end_promptly_and_their_work_is_dropped(
    tiny_checkpoint: Path,
) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        preprocess_threads=1,
        max_batch_size=16,
        max_wait_ms=5,
    )
    deadline_s = 0.05
    calls, per_call = 120, 16
    request = encoder_pb2.EmbedImagesRequest(images=[digit_png(i % 10, size=112) for i in range(per_call)])
    with serve_in_thread(settings) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)

            async def one() -> tuple[grpc.StatusCode, float]:
                started = time.monotonic()
                try:
                    await stub.EmbedImages(request, timeout=deadline_s)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                return code, time.monotonic() - started

            outcomes = await asyncio.gather(*[one() for _ in range(calls)])
            await asyncio.sleep(1.0)  # let anything still running finish
            embedded = sum(  # over every model the server runs (one here)
                sample.value
                for metric in server.metrics.items.collect()
                for sample in metric.samples
                if sample.name.endswith("_total") and sample.labels["kind"] == "image"
            )
            after = await stub.EmbedImages(
                encoder_pb2.EmbedImagesRequest(images=request.images[:1]), timeout=10
            )
    codes = {code for code, _ in outcomes}
    # Shed at once (RESOURCE_EXHAUSTED) or out of time (DEADLINE_EXCEEDED); never failed otherwise.
    assert codes <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }, codes
    assert codes & {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    slowest = max(seconds for _, seconds in outcomes)
    assert slowest < deadline_s + 2.0, f"a call outlived its deadline by {slowest - deadline_s:.2f} s"
    assert embedded < calls * per_call, "expired calls were embedded anyway"
    assert len(after.embeddings) == 1
    print(
        f"\noverload: {calls} calls x {per_call} images, deadline {deadline_s * 1000:.0f} ms: "
        f"{sum(code == grpc.StatusCode.DEADLINE_EXCEEDED for code, _ in outcomes)} DEADLINE_EXCEEDED, "
        f"{sum(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in outcomes)} RESOURCE_EXHAUSTED, "
        f"slowest answer {slowest * 1000:.0f} ms, {int(embedded)}/{calls * per_call} images embedded"
    )


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_soak_mixed_queries_against_the_full_stack(
    tiny_checkpoint: Path, encoder_target: str, tmp_path: Path
) -> None:
    indexed = build_index(tmp_path / "index", encoder_target, shifts=(0, 1, 2, 3))
    encoder_port, http_port = free_port(), free_port()
    encoder_log, gateway_log = tmp_path / "encoder.log", tmp_path / "gateway.log"
    encoder = start(
        "services.encoder",
        encoder_env(tiny_checkpoint, encoder_port, ENCODER_API_KEY=ENCODER_KEY),
        encoder_log,
    )
    gateway_variables = gateway_env(
        encoder_port,
        indexed.store_path,
        indexed.media_dir,
        http_port,
        GATEWAY_ENCODER_API_KEY=ENCODER_KEY,
        GATEWAY_API_KEY=GATEWAY_KEY,
    )
    gateway = start("services.gateway", gateway_variables, gateway_log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        encoder.wait_grpc_serving(f"127.0.0.1:{encoder_port}")
        gateway.wait_http_ready(f"{url}/readyz")
        report = asyncio.run(_soak(url, {"encoder": encoder.pid, "gateway": gateway.pid}))
    finally:
        gateway.stop()
        encoder.stop()
    latencies = np.asarray(report.latencies) * 1000
    p50, p99 = np.percentile(latencies, [50, 99])
    growth = {
        name: (report.rss_end[name] - report.rss_warm[name]) / report.rss_warm[name]
        for name in report.rss_warm
    }
    print(
        f"\nsoak: {SOAK_SECONDS:.0f} s, {SOAK_CLIENTS} clients, {len(latencies)} requests "
        f"({report.kinds}), {report.errors} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"{len(latencies) / SOAK_SECONDS:.0f} req/s"
    )
    for name in report.rss_warm:
        print(
            f"soak: {name} RSS {report.rss_warm[name] / 1024:.1f} MiB after warm-up -> "
            f"{report.rss_end[name] / 1024:.1f} MiB at the end ({growth[name] * 100:+.1f}%)"
        )
    assert report.errors == 0, report.first_error
    assert len(latencies) > SOAK_CLIENTS
    for name, grown in growth.items():
        assert grown < MAX_RSS_GROWTH, f"{name} RSS grew {grown * 100:.1f}% after warm-up"
    for log in (encoder_log, gateway_log):
        text = log.read_text()
        assert GATEWAY_KEY not in text
        assert ENCODER_KEY not in text


class SoakReport:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.kinds: dict[str, int] = {}
        self.rss_warm: dict[str, int] = {}
        self.rss_end: dict[str, int] = {}


async def _soak(url: str, pids: dict[str, int]) -> SoakReport:
    report = SoakReport()
    headers = {"x-api-key": GATEWAY_KEY}
    sketches = [digit_png(label, sketch=True, size=200) for label in range(10)]
    images = [digit_png(label, shift=1) for label in range(10)]
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    started = time.monotonic()
    warm_until = started + max(5.0, SOAK_SECONDS * 0.25)
    end = started + SOAK_SECONDS

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        rng = random.Random(number)
        while time.monotonic() < end:
            kind = rng.choice(["text", "sketch", "image"])
            label = rng.randrange(10)
            sent = time.monotonic()
            try:
                if kind == "text":
                    reply = await client.post(
                        "/api/v1/search/text", json={"query": f"a handwritten {words[label]}", "k": 5}
                    )
                else:
                    data = sketches[label] if kind == "sketch" else images[label]
                    reply = await client.post(
                        f"/api/v1/search/{kind}",
                        files={"file": (f"{kind}.png", data, "image/png")},
                        data={"k": "5"},
                    )
                failed = reply.status_code != 200
                problem = f"{kind}: {reply.status_code} {reply.text[:200]}"
            except httpx.HTTPError as exc:
                failed, problem = True, f"{kind}: {type(exc).__name__}: {exc}"
            report.latencies.append(time.monotonic() - sent)
            report.kinds[kind] = report.kinds.get(kind, 0) + 1
            if failed:
                report.errors += 1
                report.first_error = report.first_error or problem

    async def sample_memory() -> None:
        await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
        report.rss_warm = {name: rss_kib(pid) for name, pid in pids.items()}

    limits = httpx.Limits(max_connections=SOAK_CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, limits=limits) as client:
        await asyncio.gather(sample_memory(), *[client_loop(client, n) for n in range(SOAK_CLIENTS)])
    report.rss_end = {name: rss_kib(pid) for name, pid in pids.items()}
    return report


async def test_the_encoder_sheds_what_it_cannot_queue_at_once_with_a_pushback(tiny_checkpoint: Path) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        max_batch_size=4,
        max_queued_items=8,
        retry_after_s=2.0,
    )
    with serve_in_thread(settings) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)

            async def one(number: int) -> tuple[grpc.StatusCode, float, str | None]:
                started = time.monotonic()
                call = stub.EmbedText(
                    encoder_pb2.EmbedTextRequest(texts=[f"query {number} {i}" for i in range(4)])
                )
                try:
                    await call
                    return grpc.StatusCode.OK, time.monotonic() - started, None
                except grpc.aio.AioRpcError as exc:
                    pushback = dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                    return exc.code(), time.monotonic() - started, pushback

            outcomes = await asyncio.gather(*[one(n) for n in range(200)])
            after = await stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=["seven"]), timeout=10)
    shed = [outcome for outcome in outcomes if outcome[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert {code for code, _, _ in outcomes} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert shed, "200 calls at once into a queue of 8 items: some must be shed"
    assert any(code == grpc.StatusCode.OK for code, _, _ in outcomes)
    assert {pushback for _, _, pushback in shed} == {"2000"}
    assert len(after.embeddings) == 1
    print(
        f"\nencoder shedding: {len(shed)}/{len(outcomes)} RESOURCE_EXHAUSTED "
        f"(slowest refusal {max(seconds for _, seconds, _ in shed) * 1000:.0f} ms)"
    )


def test_the_gateway_sheds_over_http_and_grpc_with_retry_after(indexed: Indexed, encoder_target: str) -> None:
    settings = hardening_settings(
        indexed, encoder_target, max_in_flight=1, max_queued=1, max_queue_wait_s=0.0, query_cache_size=0
    )
    statuses: list[tuple[int, str | None]] = []
    with TestClient(create_app(settings)) as http, ThreadPoolExecutor(16) as pool:

        def search(number: int) -> tuple[int, str | None]:
            reply = http.post("/api/v1/search/text", json={"query": f"a handwritten {number}", "k": 3})
            return reply.status_code, reply.headers.get("retry-after")

        statuses = list(pool.map(search, range(200)))
    assert {status for status, _ in statuses} <= {200, 503}
    assert (200, None) in statuses
    assert {after for status, after in statuses if status == 503} <= {"1"}
    grpc_settings = hardening_settings(
        indexed,
        encoder_target,
        max_in_flight=1,
        max_queued=0,
        query_cache_size=0,
        host="127.0.0.1",
        grpc_port=0,
    )
    with search_server_in_thread(grpc_settings) as port:

        async def searches() -> list[tuple[grpc.StatusCode, str | None]]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = search_pb2_grpc.SearchStub(channel)

                async def one(number: int) -> tuple[grpc.StatusCode, str | None]:
                    try:
                        await stub.SearchText(search_pb2.TextQuery(query=f"digit {number}"), timeout=30)
                        return grpc.StatusCode.OK, None
                    except grpc.aio.AioRpcError as exc:
                        return exc.code(), dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")

                return await asyncio.gather(*[one(n) for n in range(100)])

        codes = asyncio.run(searches())
    assert {code for code, _ in codes} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert (grpc.StatusCode.RESOURCE_EXHAUSTED, "1000") in codes
    print(
        f"\ngateway shedding: HTTP {sum(status == 503 for status, _ in statuses)}/200 503, "
        f"gRPC {sum(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in codes)}/100 RESOURCE_EXHAUSTED"
    )


def test_a_spent_grpc_deadline_is_deadline_exceeded_not_a_fault(search_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{search_port}") as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        codes = set()
        for timeout in (0.001, 0.005, 0.02):
            try:
                stub.SearchText(search_pb2.TextQuery(query="a handwritten seven"), timeout=timeout)
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.add(exc.code())
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert len(stub.SearchText(search_pb2.TextQuery(query="seven"), timeout=30).hits) == 10
