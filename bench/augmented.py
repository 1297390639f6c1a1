"""Augmented MNIST at any size, deterministically, and its embeddings through the real encoder.

Image `i` is MNIST image `i mod 70,000` (train, then test) under a random affine (rotation,
scale, shear, shift; the ranges the demo model trained with) drawn from a generator seeded by
`(seed, i)`: the same index gives the same image on any run and any machine, without writing
a million files. Used by:

- `bench.store --data mnist-augmented`: a million vectors with the distribution of real
  embeddings (the served model's embeddings of these images), cached under var/bench/ so runs
  are repeatable and the encoder runs once;
- `bench.indexer_scale`: the indexer's source at a million images (`generated_source`).

    python -m bench.augmented --count 1000000 [--checkpoint DIR]   # fill the cache, print what it holds
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from clipsearch.datasets import load_mnist

if TYPE_CHECKING:
    from services.indexer.sources import Source

CACHE = Path("var/bench/embeddings")
CHUNK = 100_000  # vectors per cache file: a larger run reuses a smaller one's files
IMAGE_QUERIES = 2_000  # query images: the same digits under other warps (seed + QUERY_SEED_OFFSET)
QUERY_SEED_OFFSET = 1_000
BLOCK = 1_000  # images per random generator
MNIST_SIZE = 70_000
# The augmentation ranges of training/configs/mnist-compact.yaml (training.data.augment).
MAX_ROTATION_DEG, SCALE_RANGE, MAX_SHEAR, MAX_SHIFT = 12.0, (0.9, 1.1), 0.1, 0.1
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEXT_TEMPLATES = [
    "a handwritten digit {}",
    "the number {}",
    "{}",
    "a scribbled {}",
    "a sloppy {}",
    "i want to see a {}",
    "something that looks like a {}",
    "a photo of the digit {}",
    "a neatly written {}",
    "the digit {} drawn by hand",
]


class AugmentedMnist:
    """Deterministic augmented MNIST images by index (28x28 uint8, white digit on black)."""

    def __init__(self, mnist_dir: Path, seed: int = 0) -> None:
        train, test = load_mnist(mnist_dir, "train"), load_mnist(mnist_dir, "test")
        self.images = np.concatenate([train.images, test.images])
        self.labels = np.concatenate([train.labels, test.labels]).astype(np.int8)
        self.seed = seed

    def label(self, index: int) -> int:
        return int(self.labels[index % len(self.labels)])

    def labels_of(self, start: int, stop: int) -> np.ndarray:
        return self.labels[np.arange(start, stop) % len(self.labels)]

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a handful of blocks, for the object's lifetime
    def _block(self, block: int) -> np.ndarray:
        """The affine draws of indices [block * BLOCK, (block + 1) * BLOCK): one generator per block
        (seeding one per image costs more than warping it)."""
        rng = np.random.default_rng([self.seed, block])
        low = np.array([-MAX_ROTATION_DEG, SCALE_RANGE[0], -MAX_SHEAR, -MAX_SHIFT, -MAX_SHIFT])
        high = np.array([MAX_ROTATION_DEG, SCALE_RANGE[1], MAX_SHEAR, MAX_SHIFT, MAX_SHIFT])
        return rng.uniform(low, high, size=(BLOCK, 5))

    def pixels(self, index: int) -> np.ndarray:
        degrees, scale, shear, shift_x, shift_y = self._block(index // BLOCK)[index % BLOCK].tolist()
        # Forward map about the centre: rotation * scale * shear, then the shift; PIL wants the
        # inverse (output pixel -> input pixel).
        cos, sin = math.cos(math.radians(degrees)) * scale, math.sin(math.radians(degrees)) * scale
        a, b, c, d = cos, -sin + shear * cos, sin, cos + shear * sin
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        x, y = 13.5 + shift_x * 28, 13.5 + shift_y * 28  # where the centre goes
        coefficients = (ia, ib, 13.5 - ia * x - ib * y, ic, id_, 13.5 - ic * x - id_ * y)
        base = Image.fromarray(self.images[index % len(self.images)], mode="L")
        moved = base.transform((28, 28), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
        return np.asarray(moved)

    def png(self, index: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.pixels(index), mode="L").save(buffer, format="PNG")
        return buffer.getvalue()


def text_queries() -> list[tuple[str, int]]:
    """(query, label): each template with the digit's word and its numeral."""
    return [
        (template.format(form), label)
        for label, word in enumerate(DIGIT_WORDS)
        for template in TEXT_TEMPLATES
        for form in (word, str(label))
    ]


@dataclass(frozen=True)
class Embedded:
    directory: Path  # the cache of one model and seed
    files: list[Path]  # chunk files, in order, covering at least `count` rows
    count: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, read with plain file reads (no mmap: a reader's resident
        memory then holds only what it keeps)."""
        rows = []
        while start < stop:
            chunk, within = divmod(start, CHUNK)
            take = min(stop - start, CHUNK - within)
            with open(self.files[chunk], "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    np.lib.format.read_array_header_1_0(handle)
                else:
                    np.lib.format.read_array_header_2_0(handle)
                handle.seek(within * self.dim * 4, os.SEEK_CUR)
                rows.append(
                    np.fromfile(handle, dtype=np.float32, count=take * self.dim).reshape(take, self.dim)
                )
            start += take
        return np.concatenate(rows) if len(rows) != 1 else rows[0]


def cache_dir(fingerprint: str, seed: int) -> Path:
    return CACHE / f"{fingerprint[:16]}-seed{seed}"


async def _embed_range(
    target: str, fingerprint: str, data: AugmentedMnist, start: int, stop: int
) -> np.ndarray:
    from clipsearch.encoder_client import EncoderClient
    from clipsearch.v1 import encoder_pb2
    from services.indexer.pipeline import StreamBatch, StreamEmbedder, batch_ranges

    ranges = batch_ranges(stop - start, 128)
    parts: list[np.ndarray] = []

    async def load(number: int) -> StreamBatch:
        span = ranges[number]
        pngs = await asyncio.to_thread(lambda: [data.png(start + i) for i in span])
        return StreamBatch(number, [str(start + i) for i in span], pngs)

    async def handle(batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
        parts.append(np.asarray([list(r.embedding.values) for r in reply.results], dtype=np.float32))

    async with EncoderClient(target) as client:
        embedder = StreamEmbedder(client, fingerprint=fingerprint, concurrency=4, deadline_s=300, retries=3)
        await embedder.run(len(ranges), load, handle)
    out = np.concatenate(parts)
    if out.shape[0] != stop - start:
        raise SystemExit(f"the encoder returned {out.shape[0]} vectors for {stop - start} images")
    return out


async def _embed_texts(target: str, fingerprint: str, texts: Sequence[str]) -> np.ndarray:
    from clipsearch.encoder_client import EncoderClient

    async with EncoderClient(target) as client:
        return await client.embed_texts(list(texts), model=fingerprint)


def _fingerprint_of(target: str) -> tuple[str, int, str]:
    from clipsearch.encoder_client import EncoderClient

    async def ask() -> tuple[str, int, str]:
        async with EncoderClient(target) as client:
            info = await client.model_info()
            return info.fingerprint, info.embedding_dim, info.name

    return asyncio.run(ask())


def ensure_embeddings(
    count: int, *, checkpoint: Path, mnist_dir: Path, seed: int = 0, say: bool = True
) -> Embedded:
    """The first `count` augmented images embedded by `checkpoint`, from the cache, embedding what
    is missing with an encoder subprocess. Also caches the text queries' embeddings."""
    from bench.stack import free_port, start_encoder, wait_encoder

    chunks = math.ceil(count / CHUNK)
    with tempfile.TemporaryDirectory(prefix="bench-augmented-") as scratch:
        port = free_port()
        target = f"127.0.0.1:{port}"
        encoder = start_encoder(str(checkpoint), port, 2, Path(scratch) / "encoder.log")
        try:
            asyncio.run(wait_encoder(encoder, target))
            fingerprint, dim, name = _fingerprint_of(target)
            directory = cache_dir(fingerprint, seed)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "model.txt").write_text(f"{name}\n{fingerprint}\n{checkpoint}\n")
            texts = directory / "texts.npy"
            if not texts.exists():
                vectors = asyncio.run(_embed_texts(target, fingerprint, [q for q, _ in text_queries()]))
                np.save(texts, vectors.astype(np.float32))
            data = AugmentedMnist(mnist_dir, seed)
            np.save(directory / "labels.npy", data.labels)  # image i has label labels[i % 70,000]
            queries = directory / "image-queries.npy"
            if not queries.exists():  # other warps (another seed) of the same digits
                others = AugmentedMnist(mnist_dir, seed + QUERY_SEED_OFFSET)
                np.save(queries, asyncio.run(_embed_range(target, fingerprint, others, 0, IMAGE_QUERIES)))
            for chunk in range(chunks):
                path = directory / f"chunk-{chunk:04d}.npy"
                if path.exists():
                    continue
                started = time.perf_counter()
                vectors = asyncio.run(
                    _embed_range(target, fingerprint, data, chunk * CHUNK, (chunk + 1) * CHUNK)
                )
                temp = path.with_suffix(".tmp.npy")
                np.save(temp, vectors)
                os.replace(temp, path)  # a killed run never leaves a partial chunk behind
                if say:
                    seconds = time.perf_counter() - started
                    print(
                        f"embedded chunk {chunk + 1}/{chunks} ({CHUNK / seconds:.0f} img/s) -> {path}",
                        flush=True,
                    )
        finally:
            encoder.stop()
    files = [directory / f"chunk-{chunk:04d}.npy" for chunk in range(chunks)]
    return Embedded(directory, files, count, dim)


def cached_embeddings(directory: Path, count: int) -> Embedded:
    """An existing cache (no encoder needed)."""
    chunks = math.ceil(count / CHUNK)
    files = [directory / f"chunk-{chunk:04d}.npy" for chunk in range(chunks)]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"{directory} lacks {len(missing)} chunks for {count} vectors: run bench.augmented")
    dim = int(np.load(files[0], mmap_mode="r").shape[1])
    return Embedded(directory, files, count, dim)


def generated_source(data: AugmentedMnist, count: int, identity: str = "mnist-augmented") -> Source:
    """The indexer's `Source` of the first `count` augmented images (labels in the payload)."""
    from services.indexer.sources import Source, SourceItem, item_id

    source_identity = f"{identity}:seed{data.seed}[:{count}]"
    items = [
        SourceItem(
            id=item_id(source_identity, str(index)),
            relative_path=f"augmented/{index}",
            payload={"label": data.label(index), "class_name": str(data.label(index)), "split": "augmented"},
            caption=None,
            load=functools.partial(data.png, index),
            generated=True,
        )
        for index in range(count)
    ]
    return Source(identity=source_identity, kind="mnist", items=items)


def main(argv: Sequence[str] | None = None) -> None:
    from bench.stack import TRAINED

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--checkpoint", type=Path, default=TRAINED)
    parser.add_argument("--mnist-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mnist_dir is None:
        raise SystemExit("set MNIST_DIR or pass --mnist-dir")
    started = time.perf_counter()
    embedded = ensure_embeddings(
        args.count, checkpoint=args.checkpoint, mnist_dir=args.mnist_dir, seed=args.seed
    )
    print(
        f"{embedded.count} vectors of {embedded.dim} dims in {embedded.directory} "
        f"({time.perf_counter() - started:.0f} s this run)"
    )


if __name__ == "__main__":
    main()
