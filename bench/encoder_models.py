"""Two models: one encoder process serving both, or one process per model?

    python -m bench.encoder_models [--checkpoint DIR] [--second DIR] [--rounds 2] [--threads 2]

Starts the encoder as a deployment does (`python -m services.encoder`, one process per
configuration), and measures each layout in turn, interleaved over --rounds so load from other
jobs falls on both alike:

  one: ENCODER_MODELS=a=FIRST,b=SECOND in one process;
  two: ENCODER_CHECKPOINT=FIRST and ENCODER_CHECKPOINT=SECOND in two processes.

Both get --threads torch threads per process (the machine's cores by default, as a deployment
does). Figures, all summed over the layout's processes:
  memory: RSS and PSS (proportional: pages shared between processes counted once) once serving,
          and peak RSS at the end;
  latency: one item per call, calls alternating between the models, one caller: p50 / p99, text
          and image (MNIST test digits, PNG);
  throughput: --clients concurrent callers, half on each model, one item per call: items/s and
          CPU seconds (user + system, from /proc) per 1,000 items, text then image.

Without --second, the second model is the first's architecture with other random weights (the
figures do not depend on the weights). Text towers run as the default (ENCODER_TEXT_RUNTIME=auto);
ONNX exports are cached in a temporary directory by a warm-up start, so start times compare loads.
Prints a table; no assertions. The machine may be shared: say so with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.domain import mnist_pngs
from bench.stack import TRAINED
from clipsearch.encoder_client import EncoderClient
from clipsearch.processes import Service, cpu_seconds, free_port, start

TEXTS = [
    "seven",
    "a handwritten 3",
    "the number four",
    "show me nines",
    "a sloppy handwritten two",
    "someone wrote a five",
    "the digit 8",
    "pictures of the number one",
]
LAYOUTS = ("one", "two")


@dataclass
class Layout:
    """The running processes of one layout and where each model is served."""

    processes: list[Service] = field(default_factory=list)
    targets: dict[str, tuple[str, str]] = field(default_factory=dict)  # model -> (target, name to call)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM from /proc/PID/status, Pss from /proc/PID/smaps_rollup, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.is_file():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                values["Pss"] = int(line.split()[1])
    return values


def environment(port: int, threads: int, onnx_cache: Path) -> dict[str, str]:
    return {
        "ENCODER_HOST": "127.0.0.1",
        "ENCODER_PORT": str(port),
        "ENCODER_METRICS_ENABLED": "false",
        "ENCODER_TORCH_THREADS": str(threads),
        "ENCODER_ONNX_CACHE_DIR": str(onnx_cache),
        "HF_HUB_OFFLINE": "1",
    }


async def start_layout(
    layout: str, checkpoints: dict[str, str], threads: int, onnx_cache: Path, workdir: Path
) -> tuple[Layout, float]:
    """Start `layout`; returns it once every model serves, and the seconds that took."""
    started = time.perf_counter()
    running = Layout()
    if layout == "one":
        models = ",".join(f"{model}={path}" for model, path in checkpoints.items())
        specs = [({"ENCODER_MODELS": models}, list(checkpoints))]
    else:
        specs = [({"ENCODER_CHECKPOINT": path}, [model]) for model, path in checkpoints.items()]
    waiting = []
    try:
        for number, (extra, models_here) in enumerate(specs):
            port = free_port()
            log = workdir / f"encoder-{layout}-{number}.log"
            process = start(
                "services.encoder", env={**environment(port, threads, onnx_cache), **extra}, log=log
            )
            running.processes.append(process)
            waiting.append((process, f"127.0.0.1:{port}"))
            for model in models_here:
                # A one-model process is called without a name, as before several models existed.
                running.targets[model] = (f"127.0.0.1:{port}", model if layout == "one" else "")
        for process, target in waiting:
            await asyncio.to_thread(process.wait_grpc_serving, target)
    except BaseException:
        running.stop()
        raise
    return running, time.perf_counter() - started


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)) * 1000, float(np.percentile(samples, 99)) * 1000


async def latencies(running: Layout, images: list[bytes], calls: int) -> dict[str, tuple[float, float]]:
    """One caller, one item per call, alternating between the models: p50 and p99 in ms per kind."""
    clients = {
        model: (EncoderClient(target, timeout_s=60), name)
        for model, (target, name) in running.targets.items()
    }
    try:
        models = list(clients)
        for model in models:  # warm-up
            client, name = clients[model]
            await client.embed_texts(TEXTS[:1], model=name)
            await client.embed_images(images[:1], model=name)
        result = {}
        for kind in ("text", "image"):
            samples = []
            for i in range(calls):
                client, name = clients[models[i % len(models)]]
                item = TEXTS[i % len(TEXTS)] if kind == "text" else images[i % len(images)]
                began = time.perf_counter()
                if kind == "text":
                    await client.embed_texts([item], model=name)  # type: ignore[list-item]
                else:
                    await client.embed_images([item], model=name)  # type: ignore[list-item]
                samples.append(time.perf_counter() - began)
            result[kind] = percentiles(samples)
        return result
    finally:
        for client, _ in clients.values():
            await client.close()


async def throughput(
    running: Layout, images: list[bytes], items: int, callers: int
) -> dict[str, tuple[float, float]]:
    """`callers` concurrent callers, half per model, one item per call: (items/s, CPU s per 1,000 items)."""
    clients = {
        model: (EncoderClient(target, timeout_s=120), name)
        for model, (target, name) in running.targets.items()
    }
    models = list(clients)
    try:
        result = {}
        for kind in ("text", "image"):

            async def caller(number: int, kind: str = kind) -> None:
                client, name = clients[models[number % len(models)]]
                for i in range(number, items, callers):
                    if kind == "text":
                        await client.embed_texts([TEXTS[i % len(TEXTS)]], model=name)
                    else:
                        await client.embed_images([images[i % len(images)]], model=name)

            cpu_before = sum(cpu_seconds(pid) for pid in running.pids)
            began = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(callers)))
            elapsed = time.perf_counter() - began
            cpu = sum(cpu_seconds(pid) for pid in running.pids) - cpu_before
            result[kind] = (items / elapsed, cpu / items * 1000)
        return result
    finally:
        for client, _ in clients.values():
            await client.close()


def memory_mb(running: Layout, key: str) -> float:
    return sum(proc_memory_kb(pid).get(key, 0) for pid in running.pids) / 1024


async def measure(
    args: argparse.Namespace, checkpoints: dict[str, str], workdir: Path
) -> dict[str, list[dict[str, float]]]:
    images, _ = mnist_pngs(Path(args.mnist_dir), 512)
    onnx_cache = workdir / "onnx"
    # Warm-up start: the ONNX text towers are exported and cached once, outside the timed starts.
    warm, _ = await start_layout("one", checkpoints, args.threads, onnx_cache, workdir)
    warm.stop()
    rows: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    for round_number in range(args.rounds):
        for layout in LAYOUTS if round_number % 2 == 0 else LAYOUTS[::-1]:
            running, start_s = await start_layout(layout, checkpoints, args.threads, onnx_cache, workdir)
            try:
                row = {
                    "start s": start_s,
                    "RSS MB": memory_mb(running, "VmRSS"),
                    "PSS MB": memory_mb(running, "Pss"),
                }
                for kind, (p50, p99) in (await latencies(running, images, args.calls)).items():
                    row[f"{kind} p50 ms"], row[f"{kind} p99 ms"] = p50, p99
                for kind, (rate, cpu) in (
                    await throughput(running, images, args.items, args.clients)
                ).items():
                    row[f"{kind} /s"], row[f"{kind} CPU s/1k"] = rate, cpu
                row["peak RSS MB"] = memory_mb(running, "VmHWM")
            finally:
                running.stop()
            rows[layout].append(row)
            print(
                f"round {round_number + 1} {layout}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()),
                flush=True,
            )
    return rows


def report(rows: dict[str, list[dict[str, float]]]) -> str:
    keys = list(rows[LAYOUTS[0]][0])
    lines = [f"{'':16s}" + "".join(f"{layout:>22s}" for layout in LAYOUTS) + f"{'two / one':>12s}"]
    for key in keys:
        # Memory and start: the mean; latency, throughput and CPU: the best round (least disturbed).
        pick = np.mean if key.endswith("MB") or key == "start s" else (max if key.endswith("/s") else min)
        values = {layout: float(pick([row[key] for row in rows[layout]])) for layout in LAYOUTS}
        spread = {layout: [round(row[key], 1) for row in rows[layout]] for layout in LAYOUTS}
        cells = "".join(f"{values[layout]:10.1f} {spread[layout]!s:>11s}" for layout in LAYOUTS)
        lines.append(f"{key:16s}{cells}{values['two'] / values['one']:12.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-encoder-models-") as scratch:
        workdir = Path(scratch)
        second = args.second
        if second is None:
            from training.models import build_compact

            second = str(workdir / "second-random")
            build_compact("mnist-convnext", seed=1).save(Path(second))
        checkpoints = {"a": str(Path(args.checkpoint).resolve()), "b": str(Path(second).resolve())}
        print(f"models: a={checkpoints['a']}, b={checkpoints['b']}; {args.threads} torch threads per process")
        print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start")
        rows = asyncio.run(measure(args, checkpoints, workdir))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print("memory, start: mean of the rounds; latency, CPU: lowest; throughput: highest; [each round]")
    print(report(rows))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(TRAINED), help="the first model")
    parser.add_argument(
        "--second", help="the second model (default: the first's architecture, other weights)"
    )
    parser.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR", "var/data/mnist"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each layout, interleaved")
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per kind for latency")
    parser.add_argument("--items", type=int, default=1024, help="items per kind for throughput")
    parser.add_argument("--clients", type=int, default=16, help="concurrent callers for throughput")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
