"""The loaded model and the machinery around it: preprocessing pool, inference thread, batchers.

Everything CPU-heavy runs off the event loop: decoding and preprocessing on a
small thread pool, tokenizer and model on one dedicated inference thread (one
thread also keeps the fast tokenizer from being used concurrently).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from clipsearch.batching import BatchFn, Item, MicroBatcher, on_executor
from clipsearch.checkpoint import LoadedCheckpoint, load_checkpoint
from clipsearch.embedder import Embedder, TextInputError
from clipsearch.overload import Overloaded
from clipsearch.preprocess import ImageInputError, decode_image, decode_sketch, pixel_values
from services.encoder.metrics import EncoderMetrics
from services.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The caller's input cannot be embedded; the message names the item."""


class EncoderRuntime:
    def __init__(
        self, checkpoint: LoadedCheckpoint, settings: EncoderSettings, metrics: EncoderMetrics
    ) -> None:
        self.checkpoint = checkpoint
        self.settings = settings
        self.embedder = Embedder.from_checkpoint(
            checkpoint,
            cpu_mode=settings.cpu_mode,
            text_runtime=settings.text_runtime,
            onnx_cache_dir=settings.onnx_cache_dir,
            threads=settings.torch_threads,
        )
        if checkpoint.device.type == "cpu":
            log.info(
                "CPU mode %s (ENCODER_CPU_MODE=%s), text runtime %s (ENCODER_TEXT_RUNTIME=%s)",
                self.embedder.cpu_mode.value,
                settings.cpu_mode,
                self.embedder.text_runtime.value,
                settings.text_runtime,
            )
        # Thread settings of torch's OpenMP pool are per calling thread: apply them on the inference thread.
        self._inference = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder-inference", initializer=self._init_inference_thread
        )
        self._preprocess = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="encoder-preprocess"
        )
        # Text checks tokenize, off the event loop; one thread, as the check tokenizer is not
        # safe beside itself (it is beside inference, which has its own).
        self._text_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-text-checks")
        self._preparing = 0  # images decoding or waiting for the preprocessing pool
        self.texts: MicroBatcher[str] = self._batcher(self.embedder.embed_texts, metrics, "text")
        self.images: MicroBatcher[torch.Tensor] = self._batcher(self._embed_pixel_rows, metrics, "image")

    def _batcher(self, batch_fn: BatchFn[Item], metrics: EncoderMetrics, kind: str) -> MicroBatcher[Item]:
        return MicroBatcher(
            on_executor(batch_fn, self._inference),
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            enabled=self.settings.batching,
            on_batch=metrics.batch_size.labels(kind=kind).observe,
            max_queued_items=self.settings.max_queued_items,
            max_queue_wait_s=self.settings.max_queue_wait_ms / 1000.0,
            retry_after_s=self.settings.retry_after_s,
        )

    @classmethod
    def load(cls, settings: EncoderSettings, metrics: EncoderMetrics) -> EncoderRuntime:
        """Blocking: load the checkpoint (CheckpointError names what is wrong)."""
        checkpoint = load_checkpoint(settings.checkpoint, device=settings.device, dtype=settings.dtype)
        return cls(checkpoint, settings, metrics)

    def _init_inference_thread(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

    def start(self) -> None:
        self.texts.start()
        self.images.start()

    async def close(self) -> None:
        await self.texts.close()
        await self.images.close()
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._preprocess.shutdown(wait=True, cancel_futures=True)
        self._text_checks.shutdown(wait=True, cancel_futures=True)

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        # Checked before queueing, on a thread of their own: a check queued on the inference thread
        # would wait behind the running batch and miss the next one, and one on the event loop
        # would hold every other call while a request's texts are tokenized.
        # `texts` may be a request's repeated field: checked one text at a time (each becomes a
        # Python string only while its length is looked at) before any is copied out whole.
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._text_checks, self.embedder.check_texts, texts)
        except TextInputError as exc:
            raise InputError(str(exc)) from None
        return await self.texts.submit(list(texts))

    async def prepare(
        self, datas: Sequence[bytes], *, sketch: bool, interactive: bool = True
    ) -> list[torch.Tensor | InputError]:
        """Decode and preprocess each item on the pool: a (1, 3, H, W) tensor or the item's error.

        The pool's queue is bounded like the batchers' (Overloaded past `max_queued_items`
        images waiting or being decoded); bulk work (a stream's) is bounded by its caller."""
        limit = self.settings.max_queued_items
        if interactive and self._preparing and self._preparing + len(datas) > limit:
            raise Overloaded(
                f"over capacity ({self._preparing} images being decoded); retry in {self.settings.retry_after_s:g} s",
                self.settings.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        self._preparing += len(datas)
        try:
            # Each item is taken out of `datas` (a request's repeated field: a copy per access) on
            # the pool, so only the items being decoded are copied at a time.
            jobs = [
                loop.run_in_executor(self._preprocess, self._prepare_at, datas, position, sketch)
                for position in range(len(datas))
            ]
            return list(await asyncio.gather(*jobs))
        finally:
            self._preparing -= len(datas)

    async def embed_pixels(self, rows: Sequence[torch.Tensor], *, interactive: bool = True) -> np.ndarray:
        return await self.images.submit(list(rows), interactive=interactive)

    def _prepare_at(self, datas: Sequence[bytes], position: int, sketch: bool) -> torch.Tensor | InputError:
        return self._prepare_one(position, datas[position], sketch)

    def _prepare_one(self, position: int, data: bytes, sketch: bool) -> torch.Tensor | InputError:
        kind = "sketch" if sketch else "image"
        if not data:
            return InputError(f"{kind} {position} is empty (0 bytes)")
        if len(data) > self.settings.max_image_bytes:
            return InputError(
                f"{kind} {position} is {len(data):,} bytes; the limit is {self.settings.max_image_bytes:,}"
            )
        try:
            if sketch:
                image = decode_sketch(
                    data,
                    self.checkpoint.meta.sketch_normalization,
                    max_pixels=self.settings.max_pixels,
                    max_decoded_bytes=self.settings.max_decoded_bytes,
                )
            else:
                image = decode_image(
                    data,
                    max_pixels=self.settings.max_pixels,
                    max_decoded_bytes=self.settings.max_decoded_bytes,
                )
        except ImageInputError as exc:
            return InputError(f"{kind} {position}: {exc}")
        return pixel_values([image], self.embedder.image_processor)

    def _embed_pixel_rows(self, rows: list[torch.Tensor]) -> np.ndarray:
        return self.embedder.embed_pixel_values(torch.cat(rows))
