"""StreamEmbedder against real encoder servers: in-order results, and reconnects after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoder_client import EncoderClient, EncoderUnavailable
from clipsearch.v1 import encoder_pb2
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from services.indexer.pipeline import StreamBatch, StreamEmbedder


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


async def load(number: int) -> StreamBatch:
    ids = [f"{number}-{i}" for i in range(4)]
    return StreamBatch(number, ids, [png(number * 10 + i) for i in range(4)])


async def test_results_arrive_in_order_with_per_item_errors(encoder_target: str) -> None:
    async def load_with_a_bad_item(number: int) -> StreamBatch:
        batch = await load(number)
        if number == 1:
            batch.data[2] = b"not an image"
        return batch

    answered: list[tuple[int, list[str]]] = []

    async def handle(batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
        answered.append((batch.number, [r.error for r in reply.results]))

    async with EncoderClient(encoder_target) as client:
        info = await client.model_info()
        embedder = StreamEmbedder(
            client, fingerprint=info.fingerprint, concurrency=3, deadline_s=30, retries=0
        )
        stats = await embedder.run(6, load_with_a_bad_item, handle)
    assert [number for number, _ in answered] == list(range(6))
    errors = {number: [bool(e) for e in errs] for number, errs in answered}
    assert errors[1] == [False, False, True, False]
    assert not any(any(flags) for number, flags in errors.items() if number != 1)
    assert (stats.batches, stats.reconnects) == (6, 0)


async def test_a_restarted_encoder_gets_the_unanswered_batches_again(tiny_checkpoint: Path) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0, shutdown_grace_s=0
    )
    with contextlib.ExitStack() as servers:
        port = servers.enter_context(serve_in_thread(settings)).port
        answered: list[int] = []

        async def handle(batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
            answered.append(batch.number)
            if batch.number == 2:  # restart the server under the open stream
                await asyncio.to_thread(servers.close)
                again = settings.model_copy(update={"port": port})
                await asyncio.to_thread(servers.enter_context, serve_in_thread(again))

        async with EncoderClient(f"127.0.0.1:{port}") as client:
            info = await client.model_info()
            embedder = StreamEmbedder(
                client, fingerprint=info.fingerprint, concurrency=2, deadline_s=30, retries=5
            )
            stats = await embedder.run(8, load, handle)
    assert answered == list(range(8))  # each batch once, in order, none lost
    assert stats.reconnects >= 1
    assert stats.sent_batches > 8  # the batches in flight at the restart went out twice


async def test_an_encoder_that_stays_down_fails_after_the_retries(tiny_checkpoint: Path) -> None:
    settings = EncoderSettings(checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0)
    with serve_in_thread(settings) as running:
        client = EncoderClient(f"127.0.0.1:{running.port}")
        info = await client.model_info()

    async def handle(batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
        raise AssertionError("no result expected from a stopped server")

    embedder = StreamEmbedder(client, fingerprint=info.fingerprint, concurrency=2, deadline_s=5, retries=1)
    with pytest.raises(EncoderUnavailable, match="failed 2 times"):
        await embedder.run(3, load, handle)
    await client.close()
