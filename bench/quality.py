"""Search quality through the public HTTP API: typed digits and hand-drawn digits on MNIST.

    python -m bench.quality [--checkpoint var/checkpoints/mnist-compact-distilled] [--mnist-dir DIR] [--limit N]

Starts the real stack on loopback (encoder on the checkpoint, the indexer into a
temporary embedded store with the MNIST test split, the gateway), then asks:

  text:   POST /api/v1/search/text, k=10, for each digit its name ("seven"), its
          numeral ("7") and free-form phrasings ("show me sevens", "a handwritten 7");
  sketch: POST /api/v1/search/sketch, k=10, with digits drawn like a person draws
          on the web page's canvas (bench/sketches.py), some on a transparent canvas.

and prints precision@10 (the share of the 10 hits whose label is the asked digit)
per digit and overall. Targets (issue 5): text >= 99%, sketches >= 90%. Contact
sheets of the sketches (with the 28x28 image the model sees) and of the top-5
hits for some of them are saved to --sheets-dir.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from PIL import Image, ImageDraw

from bench.sketches import Sketch, sketch_set
from bench.stack import (
    TRAINED,
    free_port,
    index_mnist,
    start_encoder,
    start_gateway,
    wait_encoder,
    wait_gateway,
)
from clipsearch.checkpoint import CheckpointMeta
from clipsearch.preprocess import decode_sketch
from clipsearch.processes import Service

K = 10
TEXT_TARGET, SKETCH_TARGET = 0.99, 0.90
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FREE_FORM = [
    "the number {word}",
    "a handwritten {numeral}",
    "show me {plural}",
    "a scribbled {word}",
    "the digit {numeral}",
    "a sloppy handwritten {word}",
    "pictures of the number {numeral}",
    "someone wrote a {word}",
]
CONCURRENT_REQUESTS = 4


@dataclass(frozen=True)
class Query:
    digit: int
    kind: str  # "name", "numeral", "free-form" or "sketch"
    text: str = ""
    sketch: Sketch | None = None


@dataclass
class Outcome:
    query: Query
    labels: list[int]
    image_urls: list[str | None]

    @property
    def precision(self) -> float:
        return sum(label == self.query.digit for label in self.labels) / K


def plural(word: str) -> str:
    return f"{word}es" if word.endswith("x") else f"{word}s"


def text_queries() -> list[Query]:
    queries: list[Query] = []
    for digit, word in enumerate(WORDS):
        queries.append(Query(digit, "name", word))
        queries.append(Query(digit, "numeral", str(digit)))
        queries += [
            Query(digit, "free-form", template.format(word=word, numeral=digit, plural=plural(word)))
            for template in FREE_FORM
        ]
    return queries


def hit_label(hit: dict[str, Any]) -> int:
    label = hit["payload"].get("label")
    return int(label) if label is not None else -1


async def ask(http: httpx.AsyncClient, query: Query) -> Outcome:
    if query.sketch is None:
        reply = await http.post("/api/v1/search/text", json={"query": query.text, "k": K})
    else:
        files = {"file": ("sketch.png", query.sketch.png, "image/png")}
        reply = await http.post("/api/v1/search/sketch", files=files, data={"k": str(K)})
    if reply.status_code != 200:
        raise SystemExit(
            f"{query.kind} query {query.text or query.digit!r} failed: {reply.status_code} {reply.text}"
        )
    hits = reply.json()["hits"]
    return Outcome(query, [hit_label(hit) for hit in hits], [hit.get("image_url") for hit in hits])


async def ask_all(http: httpx.AsyncClient, queries: Sequence[Query]) -> list[Outcome]:
    gate = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def one(query: Query) -> Outcome:
        async with gate:
            return await ask(http, query)

    return list(await asyncio.gather(*(one(query) for query in queries)))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(outcomes: Sequence[Outcome]) -> str:
    kinds = ["name", "numeral", "free-form", "sketch"]
    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for outcome in outcomes:
        by[outcome.query.kind, outcome.query.digit].append(outcome.precision)
    counts = {kind: sum(len(by[kind, d]) for d in range(10)) for kind in kinds}
    lines = [
        f"precision@{K} through the HTTP API (queries per column: "
        + ", ".join(f"{kind} {counts[kind]}" for kind in kinds)
        + ")",
        f"{'digit':>7s}" + "".join(f"{kind:>11s}" for kind in kinds),
    ]
    for digit in range(10):
        lines.append(f"{digit:>7d}" + "".join(f"{mean(by[kind, digit]):>10.1%} " for kind in kinds))
    overall = {kind: mean([p for d in range(10) for p in by[kind, d]]) for kind in kinds}
    lines.append(f"{'overall':>7s}" + "".join(f"{overall[kind]:>10.1%} " for kind in kinds))
    text = mean([o.precision for o in outcomes if o.query.kind != "sketch"])
    sketches = [o for o in outcomes if o.query.kind == "sketch"]
    opaque = mean([o.precision for o in sketches if o.query.sketch and not o.query.sketch.transparent])
    clear = mean([o.precision for o in sketches if o.query.sketch and o.query.sketch.transparent])
    top1 = mean([float(o.labels[:1] == [o.query.digit]) for o in sketches])
    lines += [
        f"text, all kinds: {text:.2%} (target >= {TEXT_TARGET:.0%}: {'met' if text >= TEXT_TARGET else 'NOT met'})",
        f"sketch: {overall['sketch']:.2%} (target >= {SKETCH_TARGET:.0%}: "
        f"{'met' if overall['sketch'] >= SKETCH_TARGET else 'NOT met'}); "
        f"white canvas {opaque:.1%}, transparent canvas {clear:.1%}; top-1 right {top1:.1%}",
    ]
    return "\n".join(lines)


def on_checker(image: Image.Image) -> Image.Image:
    """RGBA on a light blue board, so a transparent canvas shows as such on the sheet."""
    board = Image.new("RGBA", image.size, (220, 228, 255, 255))
    return Image.alpha_composite(board, image.convert("RGBA")).convert("RGB")


def sketch_sheet(sketches: Sequence[Sketch], normalization: Any, path: Path, columns: int) -> None:
    """Every sketch as drawn (scaled down) with, beside it, the 28x28 image the model sees."""
    cell, small = 96, 56
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (len(sketches) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell + small + 6), rows * (cell + 4)), (160, 160, 160))
    for number, sketch in enumerate(sketches):
        x, y = (number % columns) * (cell + small + 6), (number // columns) * (cell + 4)
        sheet.paste(on_checker(sketch.image).resize((cell, cell), Image.Resampling.LANCZOS), (x + 2, y + 2))
        seen = decode_sketch(sketch.png, normalization).resize((small, small), Image.Resampling.NEAREST)
        sheet.paste(seen, (x + cell + 4, y + 2 + (cell - small) // 2))
    sheet.save(path)


async def results_sheet(
    http: httpx.AsyncClient, outcomes: Sequence[Outcome], normalization: Any, path: Path
) -> None:
    """Per row: the sketch, what the model sees, then the top-5 hits (green frame: right digit)."""
    cell, shown = 84, 5
    sheet = Image.new("RGB", ((shown + 2) * (cell + 4), len(outcomes) * (cell + 4)), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for row, outcome in enumerate(outcomes):
        sketch = outcome.query.sketch
        assert sketch is not None
        y = row * (cell + 4)
        sheet.paste(on_checker(sketch.image).resize((cell, cell), Image.Resampling.LANCZOS), (2, y + 2))
        seen = decode_sketch(sketch.png, normalization).resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(seen, (cell + 6, y + 2))
        for column, (label, url) in enumerate(
            zip(outcome.labels[:shown], outcome.image_urls[:shown], strict=True)
        ):
            x = (column + 2) * (cell + 4)
            if url:
                reply = await http.get(url)
                if reply.status_code == 200:
                    hit = Image.open(io.BytesIO(reply.content)).convert("RGB")
                    sheet.paste(hit.resize((cell - 4, cell - 4), Image.Resampling.NEAREST), (x + 4, y + 4))
            colour = (0, 170, 0) if label == outcome.query.digit else (220, 0, 0)
            pen.rectangle((x + 1, y + 1, x + cell + 2, y + cell + 2), outline=colour, width=3)
    sheet.save(path)


def worst_and_typical(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """For each digit, its first sketch and its worst one: what works and what does not."""
    chosen: list[Outcome] = []
    for digit in range(10):
        mine = [o for o in outcomes if o.query.digit == digit]
        chosen.append(mine[0])
        worst = min(mine, key=lambda o: o.precision)
        if worst is not mine[0]:
            chosen.append(worst)
    return chosen


async def run(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    normalization = CheckpointMeta.read(checkpoint).sketch_normalization
    sketches = sketch_set(args.variants, seed=args.seed)
    sheets = Path(args.sheets_dir)
    sketch_sheet(sketches, normalization, sheets / "quality-sketches.png", columns=args.variants)
    print(f"model: {checkpoint} (sketch normalisation {normalization.value})")
    print(f"sketches: {len(sketches)} drawn; sheet {sheets / 'quality-sketches.png'}")
    queries = text_queries() + [Query(s.digit, "sketch", sketch=s) for s in sketches]

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        workdir = Path(scratch)
        encoder_port, http_port = free_port(), free_port()
        target = f"127.0.0.1:{encoder_port}"
        store_path, media_dir = workdir / "qdrant", workdir / "media"
        encoder = start_encoder(str(checkpoint), encoder_port, args.encoder_threads, workdir / "encoder.log")
        gateway: Service | None = None
        try:
            await wait_encoder(encoder, target)
            started = time.perf_counter()
            summary = await index_mnist(target, store_path, media_dir, args.mnist_dir, args.limit)
            print(f"indexed in {time.perf_counter() - started:.0f} s: {summary}")
            gateway = start_gateway(target, store_path, media_dir, http_port, workdir / "gateway.log")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
                await wait_gateway(gateway, http_port)
                started = time.perf_counter()
                outcomes = await ask_all(http, queries)
                print(f"{len(queries)} queries in {time.perf_counter() - started:.1f} s")
                sketched = [o for o in outcomes if o.query.kind == "sketch"]
                await results_sheet(
                    http, worst_and_typical(sketched), normalization, sheets / "quality-results.png"
                )
                print(f"top-5 hits sheet: {sheets / 'quality-results.png'}")
        finally:
            if gateway is not None:
                gateway.stop()
            encoder.stop()

    print(report(outcomes))
    if args.show_misses:
        for outcome in outcomes:
            if outcome.precision < 1.0 and outcome.query.kind != "sketch":
                print(
                    f"  {outcome.query.kind:9s} {outcome.query.text!r}: {outcome.precision:.0%} {outcome.labels}"
                )
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so the services started here are stopped on SIGTERM too


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(TRAINED))
    parser.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR", "var/data/mnist"))
    parser.add_argument("--limit", type=int, default=None, help="index only the first N test images")
    parser.add_argument("--variants", type=int, default=12, help="sketches per digit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sketch generator")
    parser.add_argument("--sheets-dir", default=tempfile.gettempdir(), help="where the contact sheets go")
    parser.add_argument("--encoder-threads", type=int, default=2, help="torch threads in the encoder")
    parser.add_argument("--show-misses", action="store_true", help="list text queries below 100%%")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
