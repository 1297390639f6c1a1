"""Overload: what the stack answers at 1x, 4x and 10x its measured capacity.

    python -m bench.overload [--target gateway|encoder] [--kind text|image] [--seconds 10]
                             [--multiples 1,4,10] [--set GATEWAY_MAX_IN_FLIGHT=8 ...]

Starts the encoder (and, for --target gateway, indexes MNIST test images and starts the
gateway with its query cache off, so every query costs the encoder), then:

1. capacity: text queries from --clients closed-loop clients (each sends the next query
   when the last is answered, or 50 ms after a refusal) for --seconds; capacity is the rate
   they were answered at;
2. for each multiple m: an open-loop arrival stream at m x capacity for --seconds, each
   query sent at its scheduled time whatever happened to the others (as independent users
   would), every query a distinct text (or, with --kind image, an image: a mixed query of one
   image part, so the encoder decodes and embeds an image for each).

--set passes settings to the services (GATEWAY_* to the gateway, ENCODER_* to the encoder).

For each phase it prints the answered (200 / OK) rate and their p50 and p99 latency from the
scheduled send time, the refused (503 with Retry-After / RESOURCE_EXHAUSTED) and how fast
the refusals came, anything else, and each service's resident memory: at the start of the
phase and its peak during it. Figures are printed, never asserted; on a shared machine the
load generator competes with the services it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image, ImageDraw

from bench.http_load import KeepAliveConnection
from bench.stack import (
    TRAINED,
    index_mnist,
    start_encoder,
    start_gateway,
    trained_or_random_checkpoint,
    wait_encoder,
    wait_gateway,
)
from clipsearch.processes import Service, free_port, rss_kib
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc

OK, REFUSED, OTHER = "answered", "refused", "other"
# Connections (HTTP) the open-loop generator keeps; a query finding none free waits for one.
CONNECTIONS = 256
LATENCY_TARGET_MS = 50.0  # the gateway's p99 target (bench.gateway)
OTHER_CODES: dict[str, int] = {}  # what the "other" outcomes were
REFUSED_BACKOFF_S = 0.05  # a closed-loop client's pause after a refusal


@dataclass
class Phase:
    name: str
    offered_per_s: float
    seconds: float
    outcomes: list[tuple[str, float]] = field(default_factory=list)  # (kind, latency s)
    lags: list[float] = field(default_factory=list)  # s from a query's scheduled time to its sending
    rss_start: dict[str, int] = field(default_factory=dict)  # KiB
    rss_peak: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        answered = np.asarray([s for kind, s in self.outcomes if kind == OK]) * 1000
        refused = np.asarray([s for kind, s in self.outcomes if kind == REFUSED]) * 1000
        other = sum(kind == OTHER for kind, _ in self.outcomes)
        parts = [f"{self.name:>9s}: offered {self.offered_per_s:6.0f}/s"]
        if len(answered):
            p50, p99 = np.percentile(answered, [50, 99])
            parts.append(
                f"answered {len(answered) / self.seconds:6.0f}/s p50 {p50:6.1f} ms p99 {p99:7.1f} ms"
            )
        else:
            parts.append("answered none")
        if len(refused):
            parts.append(f"refused {len(refused):5d} (p99 {np.percentile(refused, 99):6.1f} ms)")
        else:
            parts.append("refused     0")
        parts.append(f"other {other}")
        if self.lags:  # the load generator falling behind its schedule (it shares the machine)
            parts.append(f"generator lag p99 {np.percentile(self.lags, 99) * 1000:.0f} ms")
        memory = ", ".join(
            f"{name} {self.rss_start[name] / 1024:.0f}->{self.rss_peak[name] / 1024:.0f} MiB"
            for name in self.rss_start
        )
        return " | ".join(parts) + f" | RSS {memory}"


Send = Callable[[str | bytes], Awaitable[str]]  # a query (a text, or an image's bytes) -> its outcome


class HttpTarget:
    """Queries over HTTP: texts to /search/text, images as one `part` of a mixed query ("image", or
    "sketch" for the sketch path)."""

    def __init__(self, port: int, part: str = "image") -> None:
        self.port = port
        self.part = part
        self.free: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> HttpTarget:
        for _ in range(CONNECTIONS):
            self.free.put_nowait(
                await self.stack.enter_async_context(KeepAliveConnection("127.0.0.1", self.port))
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def send(self, query: str | bytes) -> str:
        connection = await self.free.get()
        if isinstance(query, bytes):
            path = "/api/v1/search/mixed"
            body: dict[str, object] = {"parts": [{self.part: base64.b64encode(query).decode()}], "k": 10}
        else:
            path, body = "/api/v1/search/text", {"query": query, "k": 10}
        try:
            status, _, closes = await connection.post_json_status(path, body)
        except (OSError, asyncio.IncompleteReadError):
            # A kept-alive connection the server closed while it was idle: as HTTP clients do, send
            # the request again on a new one (once).
            with contextlib.suppress(OSError):
                await connection.__aexit__()
            connection = await self.stack.enter_async_context(KeepAliveConnection("127.0.0.1", self.port))
            try:
                status, _, closes = await connection.post_json_status(path, body)
            except (OSError, asyncio.IncompleteReadError):
                status, closes = 0, True
        if closes:  # refused at the connection limit: open another for the next query
            connection = await self.stack.enter_async_context(KeepAliveConnection("127.0.0.1", self.port))
        self.free.put_nowait(connection)
        if status not in (200, 429, 503):
            OTHER_CODES[str(status)] = OTHER_CODES.get(str(status), 0) + 1
        return OK if status == 200 else REFUSED if status in (429, 503) else OTHER


class GrpcTarget:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = encoder_pb2_grpc.EncoderStub(self.channel)

    async def __aenter__(self) -> GrpcTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close(grace=None)

    async def send(self, query: str | bytes) -> str:
        try:
            if isinstance(query, bytes):
                await self.stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[query]), timeout=30)
            else:
                await self.stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=[query]), timeout=30)
            return OK
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return REFUSED
            OTHER_CODES[exc.code().name] = OTHER_CODES.get(exc.code().name, 0) + 1
            return OTHER


async def sample_memory(pids: dict[str, int], phase: Phase, stop_event: asyncio.Event) -> None:
    phase.rss_start = {name: rss_kib(pid) for name, pid in pids.items()}
    phase.rss_peak = dict(phase.rss_start)
    while not stop_event.is_set():
        for name, pid in pids.items():
            phase.rss_peak[name] = max(phase.rss_peak[name], rss_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), 0.05)


def distinct_queries(kind: str) -> Iterator[str | bytes]:
    """Queries no cache has seen: numbered texts, or digit-like drawings each drawn apart."""
    for number in itertools.count():
        if kind == "text":
            yield f"a handwritten digit, query number {number}"
            continue
        image = Image.new("L", (56, 56), 0)
        draw = ImageDraw.Draw(image)
        offset = number % 17
        draw.line((8 + offset, 8, 40 - offset // 2, 48), fill=255, width=2 + number % 5)
        draw.ellipse((20, 10 + number % 11, 44, 34), outline=255, width=3)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield buffer.getvalue()


queries: Iterator[str | bytes] = iter(())


async def closed_loop(send: Send, clients: int, seconds: float, pids: dict[str, int]) -> Phase:
    phase = Phase("capacity", 0.0, seconds)
    end = time.monotonic() + seconds
    done = asyncio.Event()
    memory = asyncio.create_task(sample_memory(pids, phase, done))

    async def client() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            kind = await send(next(queries))
            phase.outcomes.append((kind, time.monotonic() - started))
            if kind != OK:  # a polite client: refused, it does not ask again at once
                await asyncio.sleep(REFUSED_BACKOFF_S)

    await asyncio.gather(*(client() for _ in range(clients)))
    done.set()
    await memory
    phase.offered_per_s = len(phase.outcomes) / seconds
    return phase


async def open_loop(send: Send, name: str, rate: float, seconds: float, pids: dict[str, int]) -> Phase:
    phase = Phase(name, rate, seconds)
    done = asyncio.Event()
    memory = asyncio.create_task(sample_memory(pids, phase, done))
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, query: str | bytes) -> None:
        phase.lags.append(time.monotonic() - scheduled)
        kind = await send(query)
        phase.outcomes.append((kind, time.monotonic() - scheduled))

    for number in range(int(rate * seconds)):
        scheduled = start + number / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, next(queries)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    done.set()
    await memory
    return phase


async def run(args: argparse.Namespace) -> int:
    global queries
    queries = distinct_queries(args.kind)
    multiples = [float(value) for value in args.multiples.split(",")]
    settings = dict(setting.split("=", 1) for setting in args.set)
    gateway_settings = {key: value for key, value in settings.items() if key.startswith("GATEWAY_")}
    os.environ.update({key: value for key, value in settings.items() if key.startswith("ENCODER_")})
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as scratch:
        workdir = Path(scratch)
        model_path, model_kind = trained_or_random_checkpoint(workdir, args.checkpoint)
        encoder_port = free_port()
        target = f"127.0.0.1:{encoder_port}"
        encoder = start_encoder(model_path, encoder_port, 1, workdir / "encoder.log")
        gateway: Service | None = None
        try:
            await wait_encoder(encoder, target)
            pids = {"encoder": encoder.pid}
            if args.target == "gateway":
                mnist_dir = os.environ.get("MNIST_DIR", "var/data/mnist")
                await index_mnist(target, workdir / "qdrant", workdir / "media", mnist_dir, args.limit)
                http_port = free_port()
                gateway = start_gateway(
                    target,
                    workdir / "qdrant",
                    workdir / "media",
                    http_port,
                    workdir / "gateway.log",
                    {"GATEWAY_QUERY_CACHE_SIZE": "0", **gateway_settings},
                )
                await wait_gateway(gateway, http_port)
                pids["gateway"] = gateway.pid
                connection: HttpTarget | GrpcTarget = HttpTarget(http_port)
            else:
                connection = GrpcTarget(encoder_port)
            async with connection:
                await closed_loop(connection.send, args.clients, 2.0, pids)  # warm-up
                capacity = await closed_loop(connection.send, args.clients, args.seconds, pids)
                rate = sum(kind == OK for kind, _ in capacity.outcomes) / args.seconds
                phases = [capacity]
                for multiple in multiples:
                    await asyncio.sleep(1.0)  # let the last phase's stragglers finish
                    phases.append(
                        await open_loop(
                            connection.send, f"{multiple:g}x", multiple * rate, args.seconds, pids
                        )
                    )
        finally:
            for service in (gateway, encoder):
                if service is not None:
                    service.stop()
    print(
        f"model: {model_kind}; target: {args.target}; {args.kind} queries, each distinct; "
        f"{os.cpu_count()} CPUs; settings: {' '.join(args.set) or 'defaults'}"
    )
    print(
        f"capacity: {args.clients} closed-loop clients for {args.seconds:g} s: {rate:.0f} answered/s; "
        f"then open-loop arrivals at each multiple of it for {args.seconds:g} s "
        f"(latency from the scheduled send; p99 target {LATENCY_TARGET_MS:.0f} ms)"
    )
    for phase in phases:
        print(phase.line())
    if OTHER_CODES:
        print(
            "other outcomes: " + ", ".join(f"{code} x{count}" for code, count in sorted(OTHER_CODES.items()))
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=["gateway", "encoder"], default="gateway")
    parser.add_argument("--kind", choices=["text", "image"], default="text")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a service setting")
    parser.add_argument("--checkpoint", type=Path, default=TRAINED, help="the model to serve")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--multiples", default="1,4,10")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients measuring capacity")
    parser.add_argument("--limit", type=int, default=2000, help="MNIST test images to index")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
