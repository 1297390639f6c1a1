"""Encoder service throughput vs a plain in-process loop, and micro-batching on vs off;
or, with --cpu-modes, the CPU inference modes (clipsearch.acceleration) side by side.

    python -m bench.encoder [--checkpoint DIR] [--items N]
    python -m bench.encoder --cpu-modes [--models vit-b32,mnist-scratch,mnist-minilm] [--repeats N]

Without --checkpoint a random compact "mnist-scratch" model is built in a temp
dir (throughput does not depend on the weights). Images are synthetic 28x28
PNG digits-like drawings, decoded on both paths so the comparison is fair.
The --cpu-modes table runs random-weight models (a ViT-B/32-shaped CLIP and
the compact MNIST ones) in every mode: images/s at batch 8 and 32, texts/s,
speed-up vs fp32 measured in the same run (modes interleaved, best of
--repeats), and the smallest cosine with the fp32 embedding over random and
structured images and a few texts. Prints a table and ratios; no assertions. Timings depend on the machine and on
anything else running on it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipsearch.acceleration import CpuMode
from clipsearch.checkpoint import load_checkpoint
from clipsearch.embedder import Embedder
from clipsearch.encoder_client import EncoderClient, ImageNormalization
from clipsearch.preprocess import decode_image
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings

BATCH_SIZES = (1, 8, 32)
CONCURRENT_CLIENTS = 32
# The batching window compared against the default (none) for a lone sequential caller.
WINDOW_MS = 5.0
REPEATS = 3
T = TypeVar("T")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def synthetic_images(count: int, size: int = 28) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        points = [tuple(int(v) for v in rng.integers(4, size - 4, 2)) for _ in range(4)]
        draw.line(points, fill=255, width=3)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def synthetic_texts(count: int) -> list[str]:
    return [f"a handwritten digit {WORDS[i % 10]}" if i % 2 else WORDS[i % 10] for i in range(count)]


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def rate(count: int, run: Callable[[], object]) -> float:
    """Best of REPEATS timed runs after a warm-up: the least disturbed by other load."""
    run()  # warm-up (allocator, thread pools)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def in_process_rates(
    embedder: Embedder, images: list[bytes], texts: list[str]
) -> dict[tuple[str, int], float]:
    rates = {}
    for batch in BATCH_SIZES:

        def embed_images(batch: int = batch) -> None:
            for chunk in chunks(images, batch):
                embedder.embed_images([decode_image(data) for data in chunk])

        def embed_texts(batch: int = batch) -> None:
            for chunk in chunks(texts, batch):
                embedder.embed_texts(chunk)

        rates["image", batch] = rate(len(images), embed_images)
        rates["text", batch] = rate(len(texts), embed_texts)
    return rates


async def async_rate(count: int, run: Callable[[], Awaitable[object]]) -> float:
    await run()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        await run()
        best = min(best, time.perf_counter() - started)
    return count / best


async def embed_as_they_are(client: EncoderClient, images: list[bytes]) -> None:
    """Images without the domain test and normalisation, as the in-process path decodes them."""
    await client.embed("image", images, normalization=ImageNormalization.OFF)


async def service_rates(target: str, images: list[bytes], texts: list[str]) -> dict[tuple[str, int], float]:
    rates = {}
    async with EncoderClient(target, timeout_s=60) as client:
        for batch in BATCH_SIZES:

            async def embed_images(batch: int = batch) -> None:
                for chunk in chunks(images, batch):
                    await embed_as_they_are(client, chunk)

            async def embed_texts(batch: int = batch) -> None:
                for chunk in chunks(texts, batch):
                    await client.embed_texts(chunk)

            rates["image", batch] = await async_rate(len(images), embed_images)
            rates["text", batch] = await async_rate(len(texts), embed_texts)
    return rates


async def concurrent_rates(target: str, images: list[bytes], texts: list[str]) -> dict[str, float]:
    """CONCURRENT_CLIENTS callers, each sending one item per request, all at once."""
    async with EncoderClient(target, timeout_s=60) as client:

        async def clients(items: list[bytes] | list[str], embed: Callable[[list], Awaitable[object]]) -> None:
            async def one_client(mine: Sequence[bytes | str]) -> None:
                for item in mine:
                    await embed([item])

            await asyncio.gather(
                *[one_client(items[i::CONCURRENT_CLIENTS]) for i in range(CONCURRENT_CLIENTS)]
            )

        return {
            "image": await async_rate(
                len(images), lambda: clients(images, partial(embed_as_they_are, client))
            ),
            "text": await async_rate(len(texts), lambda: clients(texts, client.embed_texts)),
        }


def serve_and_measure(
    settings: EncoderSettings, images: list[bytes], texts: list[str], concurrent: bool
) -> dict:
    with serve_in_thread(settings) as server:
        target = f"127.0.0.1:{server.port}"
        if concurrent:
            return asyncio.run(concurrent_rates(target, images, texts))
        return asyncio.run(service_rates(target, images, texts))


# --- CPU inference modes -------------------------------------------------------------------

CPU_MODE_BATCHES = (8, 32)
CPU_MODE_TEXTS = 32


def random_model_embedder(name: str) -> Embedder:
    """A random-weight model with tokenizer and image processor: "vit-b32" or a compact config name."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from training.models import build_compact, build_word_tokenizer, tokenizer_corpus

    if name != "vit-b32":
        bundle = build_compact(name, seed=0)
        return Embedder(bundle.model.eval(), bundle.tokenizer, bundle.image_processor)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()  # the defaults are ViT-B/32: 768 wide, 12 layers, 224 px
    tokenizer = build_word_tokenizer(tokenizer_corpus())
    return Embedder(model, tokenizer, CLIPImageProcessorPil())


def mode_test_images(size: int, count: int) -> list[Image.Image]:
    """Mostly noise, plus structured images (flat, gradient, checkerboard, strokes) as real inputs have."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    structured = [
        np.zeros((size, size, 3)),
        np.full((size, size, 3), 255.0),
        np.repeat(np.add.outer(ramp, ramp)[..., None] / 2, 3, axis=2),
        np.repeat(
            (((np.indices((size, size)) // max(size // 8, 1)).sum(0) % 2) * 255.0)[..., None], 3, axis=2
        ),
    ]
    images = [Image.fromarray(array.astype(np.uint8)) for array in structured]
    images += [decode_image(data) for data in synthetic_images(4, size)]
    while len(images) < count:
        images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return images[:count]


def time_best(run: Callable[[], object], best: float) -> float:
    started = time.perf_counter()
    run()
    return min(best, time.perf_counter() - started)


def measure_cpu_modes(name: str, repeats: int) -> list[tuple[CpuMode, dict[str, float]]]:
    """Per mode: images/s per batch size, texts/s, min cosine vs fp32 (images and texts)."""
    from clipsearch.preprocess import pixel_values

    base = random_model_embedder(name)
    embedders = {
        mode: Embedder(base.model, base.tokenizer, base.image_processor, cpu_mode=mode) for mode in CpuMode
    }
    size = int(base.model.config.vision_config.image_size)
    pixels = pixel_values(mode_test_images(size, max(CPU_MODE_BATCHES)), base.image_processor)
    texts = synthetic_texts(CPU_MODE_TEXTS)
    reference_images, reference_texts = base.embed_pixel_values(pixels), base.embed_texts(texts)
    # Small models run the inputs several times over, so each timing spans long enough to be steady.
    rounds = 1 if size >= 128 else 16

    def image_run(embedder: Embedder, batch: int) -> Callable[[], object]:
        starts = list(range(0, len(pixels), batch)) * rounds
        return lambda: [embedder.embed_pixel_values(pixels[i : i + batch]) for i in starts]

    def text_run(embedder: Embedder) -> Callable[[], object]:
        return lambda: [embedder.embed_texts(texts) for _ in range(rounds)]

    keys: list[int | str] = [*CPU_MODE_BATCHES, "text"]
    runs = {
        (mode, key): image_run(embedder, key) if isinstance(key, int) else text_run(embedder)
        for mode, embedder in embedders.items()
        for key in keys
    }
    for run in runs.values():  # warm-up: allocator, oneDNN kernels for each shape
        run()
    best = dict.fromkeys(runs, float("inf"))
    # Modes interleaved within each repeat, so load from other jobs falls on all of them alike.
    for _ in range(repeats):
        for key, run in runs.items():
            best[key] = time_best(run, best[key])
    results = []
    for mode, embedder in embedders.items():
        row = {f"img/s b{batch}": rounds * len(pixels) / best[mode, batch] for batch in CPU_MODE_BATCHES}
        row["text/s"] = rounds * len(texts) / best[mode, "text"]
        row["image cos"] = float((embedder.embed_pixel_values(pixels) * reference_images).sum(1).min())
        row["text cos"] = float((embedder.embed_texts(texts) * reference_texts).sum(1).min())
        results.append((mode, row))
    return results


def print_cpu_modes(models: list[str], repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {repeats} interleaved runs")
    print(
        f"images: {max(CPU_MODE_BATCHES)} preprocessed (random + structured); texts: {CPU_MODE_TEXTS}, batch of {CPU_MODE_TEXTS}"
    )
    for name in models:
        with ThreadPoolExecutor(max_workers=1) as worker:  # as the service's inference thread runs it
            results = worker.submit(measure_cpu_modes, name, repeats).result()
        fp32 = dict(results)[CpuMode.FP32]
        print(f"\n{name}")
        header = f"{'mode':<14}"
        for batch in CPU_MODE_BATCHES:
            header += f" {'img/s b' + str(batch):>10} {'x fp32':>6}"
        print(header + f" {'text/s':>8} {'x fp32':>6} {'min cos img':>11} {'min cos txt':>11}")
        for mode, row in results:
            line = f"{mode.value:<14}"
            for batch in CPU_MODE_BATCHES:
                key = f"img/s b{batch}"
                line += f" {row[key]:>10.1f} {row[key] / fp32[key]:>6.2f}"
            line += f" {row['text/s']:>8.1f} {row['text/s'] / fp32['text/s']:>6.2f}"
            print(line + f" {row['image cos']:>11.6f} {row['text cos']:>11.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", help="checkpoint directory (default: a fresh random mnist-scratch model)"
    )
    parser.add_argument("--items", type=int, default=256, help="items per measurement (default 256)")
    parser.add_argument("--cpu-modes", action="store_true", help="compare CPU inference modes instead")
    parser.add_argument(
        "--models", default="vit-b32,mnist-scratch", help="--cpu-modes: models to run (comma-separated)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="--cpu-modes: timed runs per mode (best kept)")
    args = parser.parse_args()
    if args.cpu_modes:
        print_cpu_modes(args.models.split(","), args.repeats)
        return

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from training.models import build_compact

            checkpoint = str(Path(scratch) / "mnist-scratch")
            build_compact("mnist-scratch", seed=0).save(Path(checkpoint))
        images, texts = synthetic_images(args.items), synthetic_texts(args.items)
        loaded = load_checkpoint(checkpoint)
        print(
            f"checkpoint {loaded.name} ({loaded.architecture}, dim {loaded.embedding_dim}) on {loaded.device}"
        )
        base = EncoderSettings(checkpoint=checkpoint, host="127.0.0.1", port=0, metrics_enabled=False)
        # Both sides run the model in the service's CPU mode (ENCODER_CPU_MODE) and text runtime
        # (ENCODER_TEXT_RUNTIME), so only the service differs.
        in_process = Embedder.from_checkpoint(
            loaded,
            cpu_mode=base.cpu_mode,
            text_runtime=base.text_runtime,
            onnx_cache_dir=base.onnx_cache_dir,
            threads=base.torch_threads,
        )
        print(
            f"CPU mode {in_process.cpu_mode.value} (ENCODER_CPU_MODE={base.cpu_mode}), "
            f"text runtime {in_process.text_runtime.value} (ENCODER_TEXT_RUNTIME={base.text_runtime})"
        )
        print(f"{args.items} items per measurement; rates in items/s, best of {REPEATS} runs\n")

        # The in-process loop runs on one worker thread, as the service's inference does: on a busy
        # machine torch's OpenMP pool behaves very differently on the main thread than on others.
        with ThreadPoolExecutor(max_workers=1) as worker:
            local = worker.submit(in_process_rates, in_process, images, texts).result()
        remote = serve_and_measure(base, images, texts, concurrent=False)
        # A lone sequential caller pays a batching window on every call; with none (the default)
        # only requests that queue while the model runs are batched together.
        windowed = serve_and_measure(
            base.model_copy(update={"max_wait_ms": WINDOW_MS}), images, texts, concurrent=False
        )
        batched = serve_and_measure(base, images, texts, concurrent=True)
        unbatched = serve_and_measure(
            base.model_copy(update={"batching": False}), images, texts, concurrent=True
        )

    print(
        f"one sequential client; service with the default {base.max_wait_ms:g} ms batching window "
        f"and with {WINDOW_MS:g} ms"
    )
    window = f"service {WINDOW_MS:g}ms"
    print(
        f"{'kind':<6} {'batch':>5} {'in-process':>11} {'service':>9} {'ratio':>6} {window:>12} {'ratio':>6}"
    )
    for kind in ("image", "text"):
        for batch in BATCH_SIZES:
            here, there, slow = local[kind, batch], remote[kind, batch], windowed[kind, batch]
            print(
                f"{kind:<6} {batch:>5} {here:>11.1f} {there:>9.1f} {there / here:>6.2f} {slow:>12.1f} {slow / here:>6.2f}"
            )
    print(f"\n{CONCURRENT_CLIENTS} concurrent clients, one item per request")
    print(f"{'kind':<6} {'batching on':>12} {'batching off':>13} {'on/off':>7}")
    for kind in ("image", "text"):
        on, off = batched[kind], unbatched[kind]
        print(f"{kind:<6} {on:>12.1f} {off:>13.1f} {on / off:>7.2f}")


if __name__ == "__main__":
    main()
