"""The stack's ceiling on this machine: the highest query rate answered with p99 <= 100 ms.

    python -m bench.ceiling [--points 100000] [--kinds text,sketch,image] [--seconds 8]
                            [--checkpoint DIR] [--mnist-dir DIR]

Starts the encoder, indexes --points augmented MNIST images (bench/augmented.py) with the real
indexer, starts the gateway with its query cache off (every query costs the encoder), then for
each kind of query (every query distinct: numbered texts, canvas-sized drawings sent as sketches,
small digit pictures sent as images):

1. capacity: 32 closed-loop clients for --seconds, the rate they are answered at;
2. open-loop arrivals (independent users: each query sent at its scheduled time) at fractions of
   that capacity, --seconds each; the ceiling is the highest rate at which p99 <= 100 ms (from the
   scheduled send) and at least 99% are answered;
3. where the CPU goes at each rate: CPU seconds of the encoder, the gateway and the load generator
   (this process) per second of the phase, from /proc.

Then the same for the encoder alone over gRPC (texts and images), beside it. Figures are printed,
never asserted; the load generator shares the cores with the stack, so its share is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench import overload
from bench.indexer_scale import run_indexer
from bench.overload import OK, GrpcTarget, HttpTarget, Phase, closed_loop, open_loop
from bench.stack import (
    TRAINED,
    start_encoder,
    start_gateway,
    trained_or_random_checkpoint,
    wait_encoder,
    wait_gateway,
)
from clipsearch.processes import Service, cpu_seconds, free_port

P99_TARGET_MS = 100.0
ANSWERED_SHARE = 0.99
FRACTIONS = (0.4, 0.6, 0.8, 0.9, 1.0)
COLLECTION = "scale"  # bench.indexer_scale's


def distinct(kind: str) -> Iterator[str | bytes]:
    """Queries no cache has seen: numbered texts; drawings, dark on a light 280 px canvas (sketch)
    or light on dark at 56 px (image), each drawn apart."""
    for number in itertools.count():
        if kind == "text":
            yield f"a handwritten digit, query number {number}"
            continue
        size, ink, paper = (280, 0, 255) if kind == "sketch" else (56, 255, 0)
        scale = size / 56
        image = Image.new("L", (size, size), paper)
        draw = ImageDraw.Draw(image)
        offset = number % 17
        draw.line(
            [(v * scale) for v in (8 + offset, 8, 40 - offset // 2, 48)],
            fill=ink,
            width=int((2 + number % 5) * scale),
        )
        draw.ellipse([(v * scale) for v in (20, 10 + number % 11, 44, 34)], outline=ink, width=int(3 * scale))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield buffer.getvalue()


@dataclass
class Step:
    phase: Phase
    cpu: dict[str, float]  # CPU seconds per second of the phase, per process

    @property
    def p99_ms(self) -> float:
        answered = [s for kind, s in self.phase.outcomes if kind == OK]
        return float(np.percentile(answered, 99) * 1000) if answered else float("inf")

    @property
    def answered_share(self) -> float:
        return sum(kind == OK for kind, _ in self.phase.outcomes) / max(len(self.phase.outcomes), 1)

    @property
    def within_target(self) -> bool:
        return self.p99_ms <= P99_TARGET_MS and self.answered_share >= ANSWERED_SHARE

    def line(self) -> str:
        cpu = ", ".join(f"{name} {share:.2f}" for name, share in self.cpu.items())
        mark = "  <= within target" if self.within_target else ""
        return f"{self.phase.line()} | CPU s/s: {cpu}{mark}"


async def measure(
    target: HttpTarget | GrpcTarget, kind: str, seconds: float, pids: dict[str, int]
) -> list[Step]:
    overload.queries = distinct(kind)
    pids = {**pids, "load generator": os.getpid()}

    async def step(rate: float | None, name: str) -> Step:
        before = {process: cpu_seconds(pid) for process, pid in pids.items()}
        started = time.monotonic()
        if rate is None:
            phase = await closed_loop(target.send, 32, seconds, pids)
        else:
            phase = await open_loop(target.send, name, rate, seconds, pids)
        elapsed = time.monotonic() - started
        cpu = {process: (cpu_seconds(pid) - before[process]) / elapsed for process, pid in pids.items()}
        return Step(phase, cpu)

    await closed_loop(target.send, 32, 2.0, pids)  # warm-up
    capacity = await step(None, "capacity")
    rate = sum(kind == OK for kind, _ in capacity.phase.outcomes) / seconds
    steps = [capacity]
    for fraction in FRACTIONS:
        await asyncio.sleep(1.0)  # the last phase's stragglers
        steps.append(await step(fraction * rate, f"{fraction:.0%}"))
    return steps


def report(title: str, steps: list[Step]) -> str:
    lines = [title, *(step.line() for step in steps)]
    within = [step for step in steps[1:] if step.within_target]
    if within:
        best = max(within, key=lambda step: step.phase.offered_per_s)
        answered = sum(kind == OK for kind, _ in best.phase.outcomes) / best.phase.seconds
        lines.append(f"  ceiling: {answered:.0f} queries/s answered at p99 {best.p99_ms:.0f} ms")
    else:
        lines.append(f"  ceiling: none of the rates tried met p99 <= {P99_TARGET_MS:.0f} ms")
    if overload.OTHER_CODES:
        other = ", ".join(f"{code} x{count}" for code, count in sorted(overload.OTHER_CODES.items()))
        lines.append(f"  other outcomes: {other}")
        overload.OTHER_CODES.clear()
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    kinds = args.kinds.split(",")
    reports: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as scratch:
        work = Path(scratch)
        model_path, model_kind = trained_or_random_checkpoint(work, args.checkpoint)
        encoder_port = free_port()
        target = f"127.0.0.1:{encoder_port}"
        encoder = start_encoder(model_path, encoder_port, args.encoder_threads, work / "encoder.log")
        gateway: Service | None = None
        try:
            await wait_encoder(encoder, target)
            indexing = argparse.Namespace(
                count=args.points, batch_size=128, concurrency=4, mnist_dir=args.mnist_dir
            )
            indexed = await asyncio.to_thread(run_indexer, indexing, target, work, None)
            print(f"indexed: {indexed.summary}", flush=True)
            http_port = free_port()
            gateway = start_gateway(
                target,
                work / "qdrant",
                work / "media",
                http_port,
                work / "gateway.log",
                {"GATEWAY_QUERY_CACHE_SIZE": "0", "GATEWAY_COLLECTION": COLLECTION},
            )
            await wait_gateway(gateway, http_port)
            pids = {"encoder": encoder.pid, "gateway": gateway.pid}
            for kind in kinds:
                part = "sketch" if kind == "sketch" else "image"
                async with HttpTarget(http_port, part) as http:
                    steps = await measure(http, kind, args.seconds, pids)
                reports.append(report(f"\nHTTP, {kind} queries (cache off, {args.points} indexed)", steps))
                print(reports[-1], flush=True)
            for kind in ("text", "image"):
                if kind not in kinds and not (kind == "image" and "sketch" in kinds):
                    continue
                async with GrpcTarget(encoder_port) as grpc_target:
                    steps = await measure(grpc_target, kind, args.seconds, {"encoder": encoder.pid})
                reports.append(report(f"\nencoder alone over gRPC, {kind}s one per call", steps))
                print(reports[-1], flush=True)
        finally:
            for service in (gateway, encoder):
                if service is not None:
                    service.stop()
    load = os.getloadavg()
    print(
        f"\nmodel: {model_kind}; {os.cpu_count()} CPUs; encoder threads {args.encoder_threads}; "
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--kinds", default="text,sketch,image")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--checkpoint", type=Path, default=TRAINED)
    parser.add_argument("--mnist-dir", type=Path, default=os.environ.get("MNIST_DIR", "var/data/mnist"))
    parser.add_argument("--encoder-threads", type=int, default=1)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
