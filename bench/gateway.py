"""Text-query latency through the gateway's HTTP API vs calling the encoder and store directly.

    python -m bench.gateway [--checkpoint DIR] [--requests 2000] [--clients 8] [--limit 10000]

Serves --checkpoint (default: the demo's var/checkpoints/mnist-compact-distilled; when
it does not exist, a compact model with random weights), indexes the MNIST test set
($MNIST_DIR, else var/data/mnist) into a temporary embedded store with the real
indexer, then measures, with the same queries and concurrency, in the same run:

  direct: EncoderClient.embed_texts + store.search from this process (the floor);
  http:   POST /api/v1/search/text on the gateway (uvicorn, its own process), sent by a lean
          keep-alive client (bench/http_load.py) so the load generator takes little of the CPU.

`--pin` runs the encoder and the gateway on cores of their own (clipsearch/affinity.py).

Target: http p50 <= 15 ms and p99 <= 50 ms with 8 concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import numpy as np

from bench.http_load import KeepAliveConnection
from bench.stack import (
    COLLECTION,
    TRAINED,
    free_port,
    index_mnist,
    start_encoder,
    start_gateway,
    trained_or_random_checkpoint,
    wait_encoder,
    wait_gateway,
)
from clipsearch.affinity import split_for_services
from clipsearch.encoder_client import EncoderClient
from clipsearch.processes import Service
from clipsearch.store import open_store
from services.gateway.settings import GatewaySettings

QUERIES = [
    f"{template.format(word)}"
    for word in ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for template in ("a handwritten digit {}.", "the number {}", "{}")
]
P50_TARGET_MS, P99_TARGET_MS = 15.0, 50.0


async def timed(
    call: Callable[[str], Awaitable[None]], requests: int, clients: int
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    latencies = await measure(call, requests, clients)
    return latencies, time.perf_counter() - started


async def measure(call: Callable[[str], Awaitable[None]], requests: int, clients: int) -> np.ndarray:
    """Latencies in ms of `requests` calls spread over `clients` concurrent workers."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for number in counter:
            started = time.perf_counter()
            await call(QUERIES[number % len(QUERIES)])
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return np.asarray(latencies)


def summary(name: str, latencies: np.ndarray, wall_s: float) -> str:
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return (
        f"{name:7s} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  p99 {p99:6.2f} ms  "
        f"{len(latencies) / wall_s:7.0f} req/s"
    )


async def run(args: argparse.Namespace) -> int:
    mnist_dir = os.environ.get("MNIST_DIR", "var/data/mnist")
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        workdir = Path(scratch)
        model_path, model_kind = trained_or_random_checkpoint(workdir, args.checkpoint)
        encoder_port, http_port = free_port(), free_port()
        target = f"127.0.0.1:{encoder_port}"
        store_path, media_dir = workdir / "qdrant", workdir / "media"
        print(f"model: {model_path} ({model_kind})")
        # --pin: the encoder and the gateway on cores of their own (clipsearch/affinity.py).
        encoder_cpus, gateway_cpus = (split_for_services() or (None, None)) if args.pin else (None, None)
        print(f"CPUs: encoder {encoder_cpus or 'any'}, gateway {gateway_cpus or 'any'}, clients any")
        encoder = start_encoder(
            model_path, encoder_port, args.encoder_threads, workdir / "encoder.log", encoder_cpus
        )
        gateway: Service | None = None
        results: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
        try:
            async with EncoderClient(target) as client:
                await wait_encoder(encoder, target)
                started = time.perf_counter()
                summary_line = await index_mnist(target, store_path, media_dir, mnist_dir, args.limit)
                print(f"indexed in {time.perf_counter() - started:.0f} s: {summary_line}")

                # Direct: the same work the gateway does, without HTTP and validation.
                store = open_store(None, store_path)
                try:
                    count = store.collection_info(COLLECTION)
                    print(f"collection: {count.count if count else 0} items")

                    async def direct(query: str) -> None:
                        vector = (await client.embed_texts([query]))[0]
                        await asyncio.to_thread(store.search, COLLECTION, vector, k=10)

                    await measure(direct, 50, args.clients)  # warm-up
                    results["direct", 1] = await timed(direct, args.requests // 4, 1)
                    results["direct", args.clients] = await timed(direct, args.requests, args.clients)
                finally:
                    store.close()  # the embedded store admits one process: hand it to the gateway

            # Uncached first (every query goes through the encoder), then with the gateway's
            # query-embedding cache, which the repeating benchmark queries hit after the warm-up.
            for path, cache_size in (("http", "0"), ("cached", str(GatewaySettings().query_cache_size))):
                gateway = start_gateway(
                    target,
                    store_path,
                    media_dir,
                    http_port,
                    workdir / "gateway.log",
                    {"GATEWAY_QUERY_CACHE_SIZE": cache_size},
                    gateway_cpus,
                )
                await wait_gateway(gateway, http_port)
                for clients in (1, args.clients):
                    requests = args.requests if clients > 1 else args.requests // 4
                    results[path, clients] = await http_latencies(http_port, requests, clients)
                gateway.stop()
                gateway = None
        finally:
            if gateway is not None:
                gateway.stop()
            encoder.stop()

    print(f"text queries, k=10, encoder torch threads {args.encoder_threads}, {os.cpu_count()} CPUs")
    print("direct: encoder + store from this process; http: the gateway, query cache off;")
    print("cached: the gateway with its query-embedding cache (every measured query is a hit)")
    for clients in (1, args.clients):
        print(f"-- {clients} concurrent client{'s' if clients > 1 else ''}:")
        for path in ("direct", "http", "cached"):
            print(summary(path, *results[path, clients]))
        (http_p50, http_p99), (direct_p50, direct_p99) = (
            np.percentile(results[path, clients][0], [50, 99]) for path in ("http", "direct")
        )
        print(f"ratio http/direct: p50 {http_p50 / direct_p50:.2f}x  p99 {http_p99 / direct_p99:.2f}x")
    for path in ("http", "cached"):
        p50, p99 = np.percentile(results[path, args.clients][0], [50, 99])
        meets = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS
        print(
            f"target with {args.clients} clients, {path} p50 <= {P50_TARGET_MS:.0f} ms and "
            f"p99 <= {P99_TARGET_MS:.0f} ms: {'met' if meets else 'NOT met'}"
        )
    return 0


async def http_latencies(http_port: int, requests: int, clients: int) -> tuple[np.ndarray, float]:
    """Text-query latencies through a ready gateway's HTTP API, one keep-alive connection per client."""
    async with contextlib.AsyncExitStack() as connections:
        pool: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()
        for _ in range(clients):
            pool.put_nowait(
                await connections.enter_async_context(KeepAliveConnection("127.0.0.1", http_port))
            )

        async def through_http(query: str) -> None:
            connection = await pool.get()
            try:
                await connection.post_json("/api/v1/search/text", {"query": query, "k": 10})
            finally:
                pool.put_nowait(connection)

        await measure(through_http, 50, clients)  # warm-up
        return await timed(through_http, requests, clients)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so the services started here are stopped on SIGTERM too


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=TRAINED, help="the model to serve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="index only the first N test images")
    # One intra-op thread: on a small shared machine, OpenMP threads spinning against the gateway
    # and the clients make single-query latency many times worse.
    parser.add_argument("--encoder-threads", type=int, default=1, help="torch threads in the encoder")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the encoder and the gateway on half the CPUs each (ENCODER_CPUS, GATEWAY_CPUS)",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
