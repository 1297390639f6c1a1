"""Image queries brought into the model's domain: digits on paper searched among MNIST's test images.

    python -m bench.domain [--checkpoint DIR] [--mnist-dir DIR] [--seed 0]
    python -m bench.domain --encoder HOST:PORT [--model NAME]      (an encoder already running)
    python -m bench.domain --gateway http://HOST:PORT               (through the public HTTP API)

Two query sets, generated here, seeded:
  printed:     each digit in each font of this machine (the system's and matplotlib's text fonts),
               black on white, 280x280, at a few sizes and positions per font;
  handwritten: scikit-learn's bundled UCI handwritten digits (`load_digits`, 8x8, 1,797 of them,
               written by other people than MNIST's), dark ink on light, slightly noisy paper,
               upscaled to 280x280.

Each query is embedded with EmbedImages twice, normalisation AUTO and OFF, and searched among
the 10,000 MNIST test images (embedded as the indexer does, as they are). The figure is
precision@10: the share of the top 10 with the query's digit, per set and mode. The MNIST test
images themselves are embedded with AUTO too: the share left as they are, and the cosine of their
AUTO embedding with their own (OFF) one, so "in domain, unchanged" is measured, not assumed; and
the same with the normalisation forced on them (EmbedSketches), what a domain test that missed them
would cost.

--gateway asks POST /api/v1/search/image (multipart: file, k=10, normalization=auto|off) of a
gateway that serves the MNIST test split and reads each hit's payload label; the MNIST self-check
needs the encoder and is skipped there. Prints a table; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.http_load import post_politely
from bench.stack import TRAINED

K = 10
CANVAS = 280
SYSTEM_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
# matplotlib's own text fonts (it is a dependency): serif, sans and typewriter faces besides DejaVu.
MATPLOTLIB_TEXT_FONTS = (
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
MODES = ("auto", "off")
INDEX_BATCH = 256


@dataclass(frozen=True)
class Query:
    digit: int
    kind: str  # "printed" or "handwritten"
    png: bytes
    source: str  # the font file, or the load_digits index


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def text_fonts() -> list[Path]:
    """The fonts rendered: every TrueType/OpenType font of the system, and matplotlib's text fonts."""
    found: dict[str, Path] = {}
    for directory in SYSTEM_FONT_DIRS:
        for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
            if path.suffix.lower() in {".ttf", ".otf"} and "Math" not in path.name:
                found.setdefault(path.name, path)
    try:
        import matplotlib

        mpl_fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name in MATPLOTLIB_TEXT_FONTS:
            if (mpl_fonts / name).is_file():
                found.setdefault(name, mpl_fonts / name)
    except ImportError:
        pass
    return [found[name] for name in sorted(found)]


def printed_digits(variants: int, seed: int) -> list[Query]:
    """Each digit in each font, black on white 280x280: `variants` sizes and positions per font."""
    rng = np.random.default_rng(seed)
    queries = []
    for font_path in text_fonts():
        for digit in range(10):
            for _ in range(variants):
                height = rng.uniform(0.35, 0.8) * CANVAS  # the glyph's height on the page
                queries.append(
                    Query(
                        digit,
                        "printed",
                        png_bytes(_render(font_path, str(digit), height, rng)),
                        font_path.name,
                    )
                )
    return queries


def _render(font_path: Path, text: str, height: float, rng: np.random.Generator) -> Image.Image:
    probe = ImageFont.truetype(str(font_path), 100)
    left, top, right, bottom = probe.getbbox(text)
    font = ImageFont.truetype(str(font_path), max(8, round(100 * height / max(bottom - top, 1))))
    left, top, right, bottom = font.getbbox(text)
    width, tall = right - left, bottom - top
    x = rng.uniform(0, max(CANVAS - width, 0)) - left
    y = rng.uniform(0, max(CANVAS - tall, 0)) - top
    page = Image.new("L", (CANVAS, CANVAS), 255)
    ImageDraw.Draw(page).text((x, y), text, font=font, fill=0)
    return page.convert("RGB")


def handwritten_digits(seed: int, limit: int | None = None) -> list[Query]:
    """scikit-learn's UCI handwritten digits as dark ink on light paper, upscaled to 280x280."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the handwritten set needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))[: limit or len(digits.images)]
    queries = []
    for index in sorted(order):
        ink_share = digits.images[index] / 16.0  # 0..1, ink high
        size = int(rng.uniform(0.45, 0.8) * CANVAS)
        ink = Image.fromarray((ink_share * 255).astype(np.uint8), mode="L").resize(
            (size, size), Image.Resampling.BICUBIC
        )
        field = np.zeros((CANVAS, CANVAS), dtype=np.float32)
        top, left = (int(rng.integers(0, CANVAS - size + 1)) for _ in range(2))
        field[top : top + size, left : left + size] = np.asarray(ink, dtype=np.float32) / 255.0
        paper, pen = rng.uniform(215, 245), rng.uniform(15, 70)
        page = paper - (paper - pen) * field + rng.normal(0, 3.0, field.shape)
        image = Image.fromarray(page.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
        queries.append(
            Query(int(digits.target[index]), "handwritten", png_bytes(image), f"load_digits[{index}]")
        )
    return queries


def mnist_pngs(mnist_dir: Path, limit: int | None) -> tuple[list[bytes], np.ndarray]:
    from clipsearch.datasets import load_mnist

    split = load_mnist(mnist_dir, "test")
    count = limit or len(split.labels)
    images = [png_bytes(Image.fromarray(split.images[i], mode="L")) for i in range(count)]
    return images, split.labels[:count]


# A search: (pngs, mode) -> for each, the labels of its top K hits.
Search = Callable[[Sequence[bytes], str], Awaitable[list[list[int]]]]


# (query set, mode) -> precision@K of each query.
Precisions = dict[tuple[str, str], list[float]]


async def measure(queries: Sequence[Query], search: Search, *, chunk: int = 32) -> Precisions:
    precision: Precisions = defaultdict(list)
    for mode in MODES:
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            for query, labels in zip(part, await search([q.png for q in part], mode), strict=True):
                precision[query.kind, mode].append(sum(label == query.digit for label in labels) / K)
    return precision


class EncoderSearch:
    """Queries through the encoder's EmbedImages, top K by dot product over MNIST test embeddings."""

    def __init__(self, target: str, model: str) -> None:
        from clipsearch.encoder_client import EncoderClient

        self.client = EncoderClient(target, timeout_s=300)
        self.model = model
        self.index = np.zeros((0, 0), dtype=np.float32)
        self.labels = np.zeros(0, dtype=np.int64)
        self.normalized: dict[str, int] = defaultdict(int)  # normalisation -> queries it was applied to

    async def embed(self, pngs: Sequence[bytes], mode: str) -> tuple[np.ndarray, list[str]]:
        from clipsearch.encoder_client import ImageNormalization

        vectors, applied = [], []
        for start in range(0, len(pngs), INDEX_BATCH):
            answer = await self.client.embed(
                "image",
                pngs[start : start + INDEX_BATCH],
                model=self.model,
                normalization=ImageNormalization.AUTO if mode == "auto" else ImageNormalization.OFF,
            )
            vectors.append(answer.vectors)
            applied += answer.normalizations
        return np.concatenate(vectors), applied

    async def build_index(self, pngs: Sequence[bytes], labels: np.ndarray) -> None:
        self.index, _ = await self.embed(pngs, "off")  # as the indexer embeds them: as they are
        self.labels = labels

    async def search(self, pngs: Sequence[bytes], mode: str) -> list[list[int]]:
        vectors, applied = await self.embed(pngs, mode)
        for name in applied:
            self.normalized[f"{mode}:{name}"] += 1
        scores = vectors @ self.index.T
        top = np.argsort(-scores, axis=1)[:, :K]
        return [[int(self.labels[i]) for i in row] for row in top]


class GatewaySearch:
    """Queries through the public HTTP API of a gateway serving the MNIST test split."""

    def __init__(self, url: str, collection: str | None) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=url, timeout=120)
        self.collection = collection

    async def search(self, pngs: Sequence[bytes], mode: str) -> list[list[int]]:
        async def one(png: bytes) -> list[int]:
            data = {"k": str(K), "normalization": mode}
            if self.collection:
                data["collection"] = self.collection
            reply = await post_politely(
                self.http, "/api/v1/search/image", files={"file": ("query.png", png, "image/png")}, data=data
            )
            if reply.status_code != 200:
                raise SystemExit(f"/api/v1/search/image answered {reply.status_code}: {reply.text[:300]}")
            return [int(hit["payload"].get("label", -1)) for hit in reply.json()["hits"]]

        return list(await asyncio.gather(*(one(png) for png in pngs)))


@contextmanager
def local_encoder(checkpoint: Path, threads: int | None) -> Iterator[str]:
    from services.encoder.server import serve_in_thread
    from services.encoder.settings import EncoderSettings

    settings = EncoderSettings(
        checkpoint=str(checkpoint),
        host="127.0.0.1",
        port=0,
        metrics_enabled=False,
        torch_threads=threads,
        text_runtime="torch",  # image queries only: no text tower export
    )
    with serve_in_thread(settings) as server:
        yield f"127.0.0.1:{server.port}"


async def self_check(search: EncoderSearch, pngs: Sequence[bytes]) -> dict[str, tuple[float, float, float]]:
    """MNIST test images through AUTO, and through the normalisation forced (EmbedSketches, what a
    wrong domain test would do): min / 1st percentile / mean cosine with their own (OFF) embedding."""
    auto, applied = await search.embed(pngs, "auto")
    search.normalized["mnist-test auto:" + ",".join(sorted(set(applied)))] += len(applied)
    forced = []
    for start in range(0, len(pngs), INDEX_BATCH):
        answer = await search.client.embed("sketch", pngs[start : start + INDEX_BATCH], model=search.model)
        forced.append(answer.vectors)
    own = search.index[: len(pngs)]
    figures = {}
    for name, vectors in (("AUTO", auto), ("normalised anyway", np.concatenate(forced))):
        cosines = (vectors * own).sum(axis=1)
        figures[name] = (float(cosines.min()), float(np.percentile(cosines, 1)), float(cosines.mean()))
    return figures


def table(precision: Precisions) -> str:
    lines = [f"{'set':12s} {'queries':>7s} {'AUTO p@10':>10s} {'OFF p@10':>10s}"]
    for kind in ("printed", "handwritten"):
        auto, off = precision.get((kind, "auto"), []), precision.get((kind, "off"), [])
        if auto:
            lines.append(f"{kind:12s} {len(auto):7d} {np.mean(auto):10.1%} {np.mean(off):10.1%}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    queries = printed_digits(args.variants, args.seed) + handwritten_digits(args.seed, args.handwritten_limit)
    fonts = len(text_fonts())
    print(
        f"queries: {sum(q.kind == 'printed' for q in queries)} printed ({fonts} fonts x 10 digits x "
        f"{args.variants}), {sum(q.kind == 'handwritten' for q in queries)} handwritten (load_digits); "
        f"seed {args.seed}; made in {time.perf_counter() - started:.1f} s"
    )
    print("fonts:", ", ".join(path.stem for path in text_fonts()))
    if args.save_examples:
        _save_examples(queries, Path(args.save_examples))
    if args.gateway:
        gateway = GatewaySearch(args.gateway, args.collection)
        try:
            print(table(await measure(queries, gateway.search)))
        finally:
            await gateway.http.aclose()
        return 0
    pngs, labels = mnist_pngs(Path(args.mnist_dir), args.mnist_limit)

    async def with_encoder(target: str) -> None:
        search = EncoderSearch(target, args.model)
        try:
            started = time.perf_counter()
            await search.build_index(pngs, labels)
            print(f"index: {len(pngs)} MNIST test images embedded in {time.perf_counter() - started:.1f} s")
            for name, (low, p1, mean) in (await self_check(search, pngs)).items():
                print(
                    f"MNIST test images, {name}: cosine with their own embedding min {low:.4f}, "
                    f"1st percentile {p1:.4f}, mean {mean:.5f}"
                )
            print(table(await measure(queries, search.search)))
            print("normalisations applied (mode:name -> queries):", dict(sorted(search.normalized.items())))
        finally:
            await search.client.close()

    if args.encoder:
        await with_encoder(args.encoder)
    else:
        print(f"model: {args.checkpoint}")
        with local_encoder(Path(args.checkpoint), args.threads) as target:
            await with_encoder(target)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def _save_examples(queries: Sequence[Query], path: Path) -> None:
    """A contact sheet: the first few queries of each set, small."""
    picked = [
        q for kind in ("printed", "handwritten") for q in [q for q in queries if q.kind == kind][::37][:20]
    ]
    sheet = Image.new("RGB", (70 * 10, 70 * ((len(picked) + 9) // 10)), "white")
    for i, query in enumerate(picked):
        thumb = Image.open(io.BytesIO(query.png)).resize((64, 64))
        sheet.paste(thumb, (70 * (i % 10) + 3, 70 * (i // 10) + 3))
    sheet.save(path)
    print(f"examples: {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(TRAINED), help="served by an encoder started here")
    parser.add_argument("--encoder", help="use a running encoder (host:port) instead")
    parser.add_argument("--model", default="", help="the encoder model to ask (name or fingerprint)")
    parser.add_argument("--gateway", help="ask a running gateway's HTTP API instead (base URL)")
    parser.add_argument("--collection", help="with --gateway: the collection to search")
    parser.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR", "var/data/mnist"))
    parser.add_argument("--mnist-limit", type=int, help="index only the first N MNIST test images")
    parser.add_argument("--variants", type=int, default=2, help="sizes and positions per font and digit")
    parser.add_argument(
        "--handwritten-limit", type=int, help="a seeded sample of this many load_digits images"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the encoder started here")
    parser.add_argument("--save-examples", help="write a contact sheet of some queries to this PNG")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
