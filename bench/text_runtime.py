"""Text-query embedding on a CPU: torch against the ONNX Runtime text towers (clipsearch.onnx_text).

    python -m bench.text_runtime [--checkpoint var/checkpoints/mnist-compact-distilled] [--threads 1] [--repeats 5]

Embeds short search queries through `Embedder.embed_texts`, one at a time and in
batches of 8 (what the encoder's batcher forms under load), with each runtime on
`--threads` intra-op threads, and prints ms per query, the speed-up over the torch
path the encoder would otherwise serve (its `auto` CPU mode), and the smallest
cosine with torch fp32. For a distilled checkpoint (training/distill.py) whose
teacher is on disk, the teacher is timed in the same run too, and the speed-up
of the distilled tower over it printed. Quality on MNIST: `python -m
training.evaluate CHECKPOINT --text-runtime onnx-int8`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.stack import TRAINED, trained_or_random_checkpoint
from clipsearch.acceleration import AUTO
from clipsearch.checkpoint import load_checkpoint
from clipsearch.embedder import Embedder
from clipsearch.onnx_text import TextRuntime
from training.distill import DISTILLATION_FILE

QUERIES = [
    "a handwritten digit seven.",
    "the number three",
    "nine",
    "show me sevens",
    "a scribbled five",
    "something that looks like an eight",
    "the number 1",
    "zero please",
]
BATCHES = (1, 8)


def ms_per_query(run: Callable[[], object], queries: int, repeats: int) -> float:
    """Best of `repeats` timed rounds (each long enough to average out timer noise)."""
    for _ in range(5):
        run()
    rounds = []
    for _ in range(repeats):
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 0.3:
            run()
            calls += 1
        rounds.append((time.perf_counter() - started) / calls)
    return min(rounds) * 1000 / queries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=TRAINED)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the bench encoders use 1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-text-runtime-") as scratch:
        path, described = trained_or_random_checkpoint(Path(scratch), args.checkpoint)
        loaded = load_checkpoint(path, device="cpu")
        reference = Embedder.from_checkpoint(loaded).embed_texts(QUERIES)
        served_torch = Embedder.from_checkpoint(loaded, cpu_mode=AUTO)
        # The torch path the encoder serves without ONNX (its auto CPU mode) is the baseline.
        baseline_name = f"torch {served_torch.cpu_mode.value}"
        runs: list[tuple[str, Embedder]] = [("torch fp32", Embedder.from_checkpoint(loaded))]
        if baseline_name != "torch fp32":
            runs.append((baseline_name, served_torch))
        for runtime in (TextRuntime.ONNX, TextRuntime.ONNX_INT8):
            embedder = Embedder.from_checkpoint(
                loaded,
                cpu_mode=AUTO,
                text_runtime=runtime,
                onnx_cache_dir=Path(scratch),
                threads=args.threads,
            )
            runs.append((runtime.value, embedder))
        print(f"model: {path} ({described}); {args.threads} thread(s); ms per query, best of {args.repeats}")
        timings: dict[str, dict[int, float]] = {}
        for name, embedder in runs:
            timings[name] = {
                batch: ms_per_query(partial(embedder.embed_texts, QUERIES[:batch]), batch, args.repeats)
                for batch in BATCHES
            }
        header = "  ".join(f"batch {batch:<2d}  vs {baseline_name:10s}" for batch in BATCHES)
        print(f"{'runtime':12s}  {header}  min cosine with torch fp32")
        for name, embedder in runs:
            cells = "  ".join(
                f"{timings[name][batch]:5.2f} ms  {timings[baseline_name][batch] / timings[name][batch]:8.2f}x    "
                for batch in BATCHES
            )
            cosine = float((embedder.embed_texts(QUERIES) * reference).sum(axis=1).min())
            print(f"{name:12s}  {cells}  {cosine:.4f}")
        print(f"speed-ups are against {baseline_name}, what the encoder runs with ENCODER_TEXT_RUNTIME=torch")
        teacher = distilled_from(Path(path))
        if teacher is not None:
            compare_with_teacher(teacher, timings, baseline_name, Path(scratch), args)


def distilled_from(checkpoint: Path) -> Path | None:
    """The teacher of a distilled checkpoint, where its record names one that is on disk."""
    record = checkpoint / DISTILLATION_FILE
    if not record.is_file():
        return None
    teacher = Path(json.loads(record.read_text())["teacher"])
    return teacher if (teacher / "config.json").is_file() else None


def compare_with_teacher(
    teacher: Path,
    timings: dict[str, dict[int, float]],
    torch_name: str,
    scratch: Path,
    args: argparse.Namespace,
) -> None:
    """Time the teacher's text tower as the encoder would serve it, against the distilled one's."""
    loaded = load_checkpoint(teacher, device="cpu")
    served = Embedder.from_checkpoint(
        loaded, cpu_mode=AUTO, text_runtime=AUTO, onnx_cache_dir=scratch, threads=args.threads
    )
    runtime = served.text_runtime.value if served.text_runtime is not TextRuntime.TORCH else torch_name
    print(
        f"teacher {teacher} as the encoder serves it ({runtime}), against the distilled tower in {runtime}:"
    )
    for batch in BATCHES:
        before = ms_per_query(partial(served.embed_texts, QUERIES[:batch]), batch, args.repeats)
        after = timings[runtime][batch]
        print(f"  batch {batch}: teacher {before:5.2f} ms, distilled {after:5.2f} ms: {before / after:4.2f}x")


if __name__ == "__main__":
    main()
