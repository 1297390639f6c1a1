"""Indexing throughput end to end vs the encoder's own streaming throughput, same run, same server.

    python -m bench.indexer [--mnist-dir DIR] [--limit N] [--sweep 64x4,128x4] [--full]
                            [--checkpoint DIR | --encoder HOST:PORT]

The baseline streams the same MNIST images (PNG bytes made beforehand) through
StreamEmbedImages and keeps only the vectors: what the encoder can do at best.
The indexer run is the real job (`run_index`): read MNIST, make the PNGs,
stream, write media files and points to a fresh embedded Qdrant, publish.
The ratio indexer/encoder is the indexer's efficiency (target: >= 0.8).

Without --encoder an encoder server is started in a subprocess (its own
process, as deployed) on a random compact "mnist-scratch" model built in a temp
dir (throughput does not depend on the weights). Timings depend on the machine
and on whatever else runs on it; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bench.stack import free_port
from clipsearch.datasets import load_mnist
from clipsearch.encoder_client import EncoderClient
from clipsearch.processes import cpu_seconds
from clipsearch.v1 import encoder_pb2
from services.indexer.job import run_index
from services.indexer.pipeline import StreamBatch, StreamEmbedder, batch_ranges
from services.indexer.settings import IndexerSettings

DEFAULT_SWEEP = "32x2,64x4,128x4,256x4,256x8"


def mnist_pngs(directory: Path, limit: int | None) -> list[bytes]:
    # The order the indexer reads with --mnist-split both: train, then test.
    images = np.concatenate([load_mnist(directory, "train").images, load_mnist(directory, "test").images])
    pngs = []
    for pixels in images[:limit]:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


async def encoder_only(
    target: str, pngs: list[bytes], batch_size: int, concurrency: int, *, deadline_s: float = 120
) -> float:
    """Images/s through StreamEmbedImages, keeping the vectors and nothing else."""
    ranges = batch_ranges(len(pngs), batch_size)
    kept: list[np.ndarray] = []

    async def load(number: int) -> StreamBatch:
        span = ranges[number]
        return StreamBatch(number, [str(i) for i in span], [pngs[i] for i in span])

    async def handle(batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
        kept.append(np.asarray([list(r.embedding.values) for r in reply.results], dtype=np.float32))

    async with EncoderClient(target) as client:
        info = await client.model_info()
        embedder = StreamEmbedder(
            client, fingerprint=info.fingerprint, concurrency=concurrency, deadline_s=deadline_s, retries=0
        )
        started = time.perf_counter()
        await embedder.run(len(ranges), load, handle)
        return len(pngs) / (time.perf_counter() - started)


async def indexer(
    target: str, mnist_dir: Path, limit: int | None, batch_size: int, concurrency: int, work: Path
) -> tuple[float, int]:
    """Images/s of a whole `run_index` into a fresh embedded store, and the points it wrote."""
    run_dir = Path(tempfile.mkdtemp(dir=work))
    settings = IndexerSettings(
        encoder=target,
        store_path=run_dir / "qdrant",
        media_dir=run_dir / "media",
        collection="bench",
        source="mnist",
        mnist_dir=mnist_dir,
        mnist_split="both",
        limit=limit,
        batch_size=batch_size,
        concurrency=concurrency,
        deadline_s=120,
        progress=False,
    )
    started = time.perf_counter()
    report = await run_index(settings)
    return report.count / (time.perf_counter() - started), report.count


class CpuMeter:
    """CPU seconds of this process and of the encoder process over a block of work."""

    def __init__(self, encoder_pid: int | None) -> None:
        self.encoder_pid = encoder_pid

    @contextlib.contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        own, encoder = cpu_seconds(), cpu_seconds(self.encoder_pid) if self.encoder_pid else 0.0
        yield
        into["client"] = cpu_seconds() - own
        into["encoder"] = cpu_seconds(self.encoder_pid) - encoder if self.encoder_pid else float("nan")


@contextlib.contextmanager
def encoder_subprocess(checkpoint: Path | None, work: Path) -> Iterator[tuple[str, int]]:
    if checkpoint is None:
        from training.models import build_compact

        checkpoint = work / "mnist-scratch"
        build_compact("mnist-scratch", seed=0).save(checkpoint)
    port = free_port()
    env = {
        **os.environ,
        "ENCODER_CHECKPOINT": str(checkpoint),
        "ENCODER_HOST": "127.0.0.1",
        "ENCODER_PORT": str(port),
        "ENCODER_METRICS_ENABLED": "false",
        "ENCODER_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.encoder"], env=env)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(wait_serving(target, process))
        yield target, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


async def wait_serving(target: str, process: subprocess.Popen[bytes]) -> None:
    async with EncoderClient(target) as client:
        deadline = time.monotonic() + 180
        while not await client.serving():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the encoder subprocess did not start (exit code {process.poll()})")
            await asyncio.sleep(0.5)


def parse_sweep(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        batch, concurrency = part.lower().split("x")
        pairs.append((int(batch), int(concurrency)))
    return pairs


async def run(args: argparse.Namespace, target: str, work: Path, encoder_pid: int | None) -> None:
    meter = CpuMeter(encoder_pid)
    pngs = mnist_pngs(args.mnist_dir, args.limit)
    async with EncoderClient(target) as client:
        info = await client.model_info()
    print(
        f"encoder {target}: {info.model_name} dim={info.embedding_dim} device={info.device} dtype={info.dtype}"
    )
    print(f"CPU cores: {os.cpu_count()}; subset: {len(pngs)} MNIST images (train, then test)\n")
    await encoder_only(target, pngs[: min(2048, len(pngs))], 64, 4)  # warm-up

    print(
        f"{'batch':>5} {'in flight':>9} {'encoder img/s':>14} {'indexer img/s':>14} {'ratio':>6}"
        f" {'encoder CPU ms/img':>19} {'indexer CPU ms/img':>19}"
    )
    best: tuple[float, int, int] = (0.0, 64, 4)
    cpu_totals = {"encoder": 0.0, "client": 0.0}
    for batch_size, concurrency in parse_sweep(args.sweep):
        baseline = await encoder_only(target, pngs, batch_size, concurrency)
        cpu: dict[str, float] = {}
        with meter.measure(cpu):
            indexed, count = await indexer(target, args.mnist_dir, args.limit, batch_size, concurrency, work)
        assert count == len(pngs), f"indexer wrote {count} points for {len(pngs)} images"
        ratio = indexed / baseline
        print(
            f"{batch_size:>5} {concurrency:>9} {baseline:>14.0f} {indexed:>14.0f} {ratio:>6.2f}"
            f" {1000 * cpu['encoder'] / count:>19.2f} {1000 * cpu['client'] / count:>19.2f}"
        )
        cpu_totals["encoder"] += cpu["encoder"]
        cpu_totals["client"] += cpu["client"]
        if indexed > best[0]:
            best = (indexed, batch_size, concurrency)

    if encoder_pid:
        # Where the indexer and the encoder share the cores, and the encoder is CPU-bound, the
        # best ratio the indexer can reach is the encoder's share of the CPU work per image.
        share = cpu_totals["encoder"] / (cpu_totals["encoder"] + cpu_totals["client"])
        print(
            f"\nencoder share of the CPU per indexed image: {share:.2f} (the ratio's ceiling on shared cores)"
        )

    if args.full:
        _, batch_size, concurrency = best
        print(f"\nall of MNIST (70,000 images) at batch {batch_size} x {concurrency} in flight:")
        everything = mnist_pngs(args.mnist_dir, None)
        baseline = await encoder_only(target, everything, batch_size, concurrency)
        started = time.perf_counter()
        indexed, count = await indexer(target, args.mnist_dir, None, batch_size, concurrency, work)
        seconds = time.perf_counter() - started
        print(
            f"encoder only {baseline:.0f} img/s; indexer {indexed:.0f} img/s ({count} points in {seconds:.0f} s); "
            f"ratio {indexed / baseline:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--limit", type=int, default=10_000, help="images per sweep point")
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help="batch x in-flight pairs, e.g. 64x4,128x8")
    parser.add_argument("--full", action="store_true", help="also index all 70,000 images once")
    parser.add_argument("--checkpoint", type=Path, help="encoder checkpoint (default: random mnist-scratch)")
    parser.add_argument("--encoder", help="use a running encoder instead of starting one")
    args = parser.parse_args()
    if args.mnist_dir is None:
        raise SystemExit("set MNIST_DIR or pass --mnist-dir")
    with tempfile.TemporaryDirectory(prefix="bench-indexer-") as scratch:
        work = Path(scratch)
        if args.encoder:
            asyncio.run(run(args, args.encoder, work, None))
        else:
            with encoder_subprocess(args.checkpoint, work) as (target, pid):
                asyncio.run(run(args, target, work, pid))


if __name__ == "__main__":
    main()
