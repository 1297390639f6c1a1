"""The loaded models and the machinery around them: preprocessing pool, inference thread, batchers.

Everything CPU-heavy runs off the event loop: decoding and preprocessing on a
small thread pool, tokenizer and model on one dedicated inference thread (one
thread also keeps the fast tokenizer from being used concurrently). Several
models in one process share both: their forward passes take turns on the one
inference thread rather than fight over the same cores, and each model keeps
its own batchers, so a batch never mixes models.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from clipsearch.batching import BatchFn, Item, MicroBatcher, on_executor
from clipsearch.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from clipsearch.embedder import Embedder, TextInputError
from clipsearch.overload import Overloaded
from clipsearch.preprocess import (
    ImageInputError,
    SketchNormalization,
    decode_image,
    decode_sketch,
    pixel_values,
    to_model_domain,
)
from services.encoder.metrics import EncoderMetrics
from services.encoder.model_dirs import Stamp, is_local, models_in, stamp_of
from services.encoder.settings import FINGERPRINT, EncoderSettings, ModelSource

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The caller's input cannot be embedded; the message names the item."""


class ModelNotFound(LookupError):
    """The call names a model this server does not serve; the message lists the served ones."""


class ModelNotReady(RuntimeError):
    """The named model is still loading."""


@dataclass
class PoolLoad:
    """Images decoding or waiting for the preprocessing pool the models share."""

    images: int = 0


@dataclass(frozen=True)
class Prepared:
    """One decoded, preprocessed item: the model input and the normalisation applied to it."""

    pixels: torch.Tensor  # (1, 3, H, W)
    normalization: SketchNormalization


class EncoderRuntime:
    """One served model: checkpoint, embedder and its batchers, on the threads the registry shares."""

    def __init__(
        self,
        name: str,
        checkpoint: LoadedCheckpoint,
        settings: EncoderSettings,
        metrics: EncoderMetrics,
        *,
        inference: Executor,
        preprocess: Executor,
        text_checks: Executor,
        pool_load: PoolLoad,
    ) -> None:
        self.name = name
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
                "model %s: CPU mode %s (ENCODER_CPU_MODE=%s), text runtime %s (ENCODER_TEXT_RUNTIME=%s)",
                name,
                self.embedder.cpu_mode.value,
                settings.cpu_mode,
                self.embedder.text_runtime.value,
                settings.text_runtime,
            )
        self._inference = inference
        self._preprocess = preprocess
        self._text_checks = text_checks
        self._pool_load = pool_load
        self.texts: MicroBatcher[str] = self._batcher(self.embedder.embed_texts, metrics, "text")
        self.images: MicroBatcher[torch.Tensor] = self._batcher(self._embed_pixel_rows, metrics, "image")

    def _batcher(self, batch_fn: BatchFn[Item], metrics: EncoderMetrics, kind: str) -> MicroBatcher[Item]:
        return MicroBatcher(
            on_executor(batch_fn, self._inference),
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            enabled=self.settings.batching,
            on_batch=metrics.batch_size.labels(model=self.name, kind=kind).observe,
            max_queued_items=self.settings.max_queued_items,
            max_queue_wait_s=self.settings.max_queue_wait_ms / 1000.0,
            retry_after_s=self.settings.retry_after_s,
        )

    @classmethod
    def load(
        cls,
        source: ModelSource,
        settings: EncoderSettings,
        metrics: EncoderMetrics,
        *,
        inference: Executor,
        preprocess: Executor,
        text_checks: Executor,
        pool_load: PoolLoad,
    ) -> EncoderRuntime:
        """Blocking: load the checkpoint (CheckpointError names the model and what is wrong)."""
        try:
            checkpoint = load_checkpoint(source.checkpoint, device=settings.device, dtype=settings.dtype)
        except CheckpointError as exc:
            raise CheckpointError(f"model {source.name!r}: {exc}") from None
        return cls(
            source.name,
            checkpoint,
            settings,
            metrics,
            inference=inference,
            preprocess=preprocess,
            text_checks=text_checks,
            pool_load=pool_load,
        )

    @property
    def fingerprint(self) -> str:
        return self.checkpoint.fingerprint

    @property
    def sketch_normalization(self) -> SketchNormalization:
        return self.checkpoint.meta.sketch_normalization

    def start(self) -> None:
        self.texts.start()
        self.images.start()

    async def close(self) -> None:
        await self.texts.close()
        await self.images.close()

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
        self, datas: Sequence[bytes], *, sketch: bool, auto_domain: bool = False, interactive: bool = True
    ) -> list[Prepared | InputError]:
        """Decode and preprocess each item on the pool: its model input or the item's error.

        `auto_domain` (images only): a picture that does not look like the model's own images gets
        the checkpoint's sketch normalisation (clipsearch.preprocess.to_model_domain).

        The pool's queue is bounded like the batchers' (Overloaded past `max_queued_items` images
        waiting or being decoded, all models together); bulk work (a stream's) is bounded by its
        caller.
        """
        load, limit = self._pool_load, self.settings.max_queued_items
        if interactive and load.images and load.images + len(datas) > limit:
            raise Overloaded(
                f"over capacity ({load.images} images being decoded); retry in {self.settings.retry_after_s:g} s",
                self.settings.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        load.images += len(datas)
        try:
            # Each item is taken out of `datas` (a request's repeated field: a copy per access) on
            # the pool, so only the items being decoded are copied at a time.
            jobs = [
                loop.run_in_executor(self._preprocess, self._prepare_at, datas, position, sketch, auto_domain)
                for position in range(len(datas))
            ]
            return list(await asyncio.gather(*jobs))
        finally:
            load.images -= len(datas)

    async def embed_pixels(self, rows: Sequence[torch.Tensor], *, interactive: bool = True) -> np.ndarray:
        return await self.images.submit(list(rows), interactive=interactive)

    def _prepare_at(
        self, datas: Sequence[bytes], position: int, sketch: bool, auto_domain: bool
    ) -> Prepared | InputError:
        return self._prepare_one(position, datas[position], sketch, auto_domain)

    def _prepare_one(
        self, position: int, data: bytes, sketch: bool, auto_domain: bool
    ) -> Prepared | InputError:
        kind = "sketch" if sketch else "image"
        if not data:
            return InputError(f"{kind} {position} is empty (0 bytes)")
        if len(data) > self.settings.max_image_bytes:
            return InputError(
                f"{kind} {position} is {len(data):,} bytes; the limit is {self.settings.max_image_bytes:,}"
            )
        mode = self.sketch_normalization
        try:
            limits = {
                "max_pixels": self.settings.max_pixels,
                "max_decoded_bytes": self.settings.max_decoded_bytes,
            }
            if sketch:
                image, applied = decode_sketch(data, mode, **limits), mode
            else:
                image, applied = decode_image(data, **limits), SketchNormalization.NONE
                if auto_domain:
                    image, applied = to_model_domain(image, mode)
        except ImageInputError as exc:
            return InputError(f"{kind} {position}: {exc}")
        return Prepared(pixel_values([image], self.embedder.image_processor), applied)

    def _embed_pixel_rows(self, rows: list[torch.Tensor]) -> np.ndarray:
        return self.embedder.embed_pixel_values(torch.cat(rows))


class ModelRegistry:
    """The models one encoder serves, found by name or fingerprint, and the threads they share.

    Names come from ENCODER_MODELS (or the one checkpoint) and the models directory. While serving,
    `refresh` loads new and changed checkpoint directories (services/encoder/model_dirs.py): a
    changed directory's weights replace its name's, and the replaced weights stay served by their
    fingerprint (`keep_replaced` per name), so the collections they built keep answering while the
    indexer builds, evaluates and publishes the new model's version, and can be rolled back to.
    """

    def __init__(self, settings: EncoderSettings, metrics: EncoderMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.fixed = settings.model_sources()  # a failure to load one of these fails the start
        self.sources = list(self.fixed)
        self._loaded: dict[str, EncoderRuntime] = {}  # by name, in load order
        self._replaced: dict[str, list[EncoderRuntime]] = {}  # by name, most recently replaced first
        self._stamps: dict[str, Stamp | None] = {}  # the directory state each name was loaded from
        self._settling: dict[str, Stamp] = {}  # a new state seen once: loaded if it holds still
        self._closing: dict[asyncio.Task[None], EncoderRuntime] = {}  # unloaded, closed after a grace
        # Thread settings of torch's OpenMP pool are per calling thread: apply them on the inference thread.
        self._inference = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder-inference", initializer=self._init_inference_thread
        )
        self._preprocess = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="encoder-preprocess"
        )
        self._pool_load = PoolLoad()
        # Text checks tokenize, off the event loop; one thread for every model, as a check tokenizer
        # is not safe beside itself (it is beside inference, which has its own).
        self._text_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-text-checks")

    def _init_inference_thread(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    @property
    def loaded(self) -> list[EncoderRuntime]:
        """The current weights of each name."""
        return list(self._loaded.values())

    @property
    def served(self) -> list[EncoderRuntime]:
        """Every model a call can reach: each name's current weights, then the replaced ones."""
        return [*self._loaded.values(), *(old for olds in self._replaced.values() for old in olds)]

    @property
    def complete(self) -> bool:
        return len(self._loaded) == len(self.sources)

    def _discovered(self) -> list[ModelSource]:
        """The models directory's models whose names ENCODER_MODELS does not already give."""
        if self.settings.models_dir is None:
            return []
        taken = {source.name for source in self.fixed}
        found = []
        for source in models_in(self.settings.models_dir):
            if source.name in taken:
                log.warning(
                    "models directory entry %s is not served: ENCODER_MODELS names %r already",
                    source.checkpoint,
                    source.name,
                )
                continue
            found.append(source)
        return found

    async def _load(self, source: ModelSource) -> tuple[EncoderRuntime, Stamp | None]:
        """Load one model off the event loop, with the state of its directory; a directory that
        changed during the load (replaced, still being written) is loaded again."""
        local = is_local(source)
        for attempt in range(3):
            before = await asyncio.to_thread(stamp_of, source) if local else None
            if local and before is None and attempt < 2:  # missing, or between two renames
                await asyncio.sleep(1.0)
                continue
            runtime = await asyncio.to_thread(
                EncoderRuntime.load,
                source,
                self.settings,
                self.metrics,
                inference=self._inference,
                preprocess=self._preprocess,
                text_checks=self._text_checks,
                pool_load=self._pool_load,
            )
            if not local or await asyncio.to_thread(stamp_of, source) == before:
                return runtime, before
            log.info("model %s: %s changed while it loaded; loading it again", source.name, source.checkpoint)
        raise CheckpointError(f"model {source.name!r}: {source.checkpoint} kept changing while it loaded")

    def _look(self) -> list[tuple[ModelSource, Stamp | None]]:
        """(Blocking: file system.) Every local model directory watched, with its state now."""
        known = {source.name for source in self.sources}
        watched = [*self.sources, *(s for s in self._discovered() if s.name not in known)]
        return [(source, stamp_of(source)) for source in watched if is_local(source)]

    async def load_all(self, on_loaded: Callable[[EncoderRuntime], Awaitable[None]]) -> None:
        """Load every model in turn, off the event loop; each serves as soon as it is loaded.

        A model of ENCODER_MODELS (or the checkpoint) that fails to load fails the whole start
        (CheckpointError naming it): the set of models is the deployment's contract, and a server
        that never becomes ready keeps a rolling update on the old servers instead of answering
        some collections with errors. A models directory entry that fails is logged and left out
        until its directory changes.
        """
        discovered = await asyncio.to_thread(self._discovered)
        self.sources = [*self.fixed, *discovered]
        for source in list(self.sources):
            try:
                runtime, stamp = await self._load(source)
            except CheckpointError as exc:
                if source not in discovered:
                    raise
                log.error("%s; not served until its directory changes", exc)
                self.sources.remove(source)
                self._stamps[source.name] = await asyncio.to_thread(stamp_of, source)
                continue
            twin = next((other for other in self.loaded if other.fingerprint == runtime.fingerprint), None)
            if twin is not None:
                raise CheckpointError(
                    f"models {twin.name!r} and {source.name!r} are the same weights "
                    f"(fingerprint {runtime.fingerprint[:12]}); serve them once, under one name"
                )
            runtime.start()
            self._loaded[source.name] = runtime
            self._stamps[source.name] = stamp
            await on_loaded(runtime)

    async def refresh(
        self,
        on_loaded: Callable[[EncoderRuntime], Awaitable[None]],
        on_unloaded: Callable[[EncoderRuntime], Awaitable[None]],
    ) -> list[EncoderRuntime]:
        """One look at the checkpoint directories: load what is new or changed (once it has held
        still since the last look). Returns the runtimes that started serving."""
        started = []
        for source, stamp in await asyncio.to_thread(self._look):
            if stamp is None or stamp == self._stamps.get(source.name):
                self._settling.pop(source.name, None)
                continue
            if self._settling.get(source.name) != stamp:
                self._settling[source.name] = stamp  # seen once: load it if it holds still
                continue
            del self._settling[source.name]
            try:
                runtime, loaded_stamp = await self._load(source)
            except CheckpointError as exc:
                log.error("%s; still serving what was loaded before", exc)
                self._stamps[source.name] = stamp  # not again until the directory changes
                continue
            self._stamps[source.name] = loaded_stamp
            if await self._swap_in(source, runtime, on_loaded, on_unloaded):
                started.append(runtime)
        return started

    async def _swap_in(
        self,
        source: ModelSource,
        runtime: EncoderRuntime,
        on_loaded: Callable[[EncoderRuntime], Awaitable[None]],
        on_unloaded: Callable[[EncoderRuntime], Awaitable[None]],
    ) -> bool:
        """Serve `runtime` under its name; the weights it replaces stay reachable by fingerprint."""
        name, fingerprint = source.name, runtime.fingerprint
        current = self._loaded.get(name)
        if current is not None and current.fingerprint == fingerprint:
            return False  # files touched, same weights
        twin = next((r for r in self.served if r.fingerprint == fingerprint and r.name != name), None)
        if twin is not None:
            log.error(
                "model %s: %s holds the weights model %s serves (fingerprint %s); not served twice",
                name,
                source.checkpoint,
                twin.name,
                fingerprint[:12],
            )
            return False
        replaced = self._replaced.setdefault(name, [])
        earlier = next((r for r in replaced if r.fingerprint == fingerprint), None)
        if earlier is not None:  # the directory went back to weights still served: no second copy
            replaced.remove(earlier)
            runtime = earlier
        else:
            runtime.start()
        if source not in self.sources:
            self.sources.append(source)
        self._loaded[name] = runtime
        if current is not None:
            replaced.insert(0, current)
        log.info(
            "model %s now serves %s (fingerprint %s)%s",
            name,
            runtime.checkpoint.path,
            fingerprint[:12],
            f"; {current.fingerprint[:12]} stays served by fingerprint" if current else "",
        )
        await on_loaded(runtime)
        for old in replaced[self.settings.keep_replaced :]:
            replaced.remove(old)
            log.info("model %s: unloading replaced weights %s", name, old.fingerprint[:12])
            await on_unloaded(old)
            self._close_later(old)
        return True

    def _close_later(self, runtime: EncoderRuntime) -> None:
        """Close an unloaded model once the calls already holding it have had time to finish."""

        async def close() -> None:
            await asyncio.sleep(self.settings.shutdown_grace_s)
            await runtime.close()

        task = asyncio.get_running_loop().create_task(close())
        self._closing[task] = runtime
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    def resolve(self, model: str) -> EncoderRuntime:
        """The runtime a call's `model` field names (a name or a fingerprint; empty: the only model).

        InputError when several models are served and none is named, ModelNotFound for a model this
        server does not serve, ModelNotReady while the named model (or, unnamed, the only one) loads.
        """
        if not model:
            if len(self.sources) > 1:
                raise InputError(
                    f"this encoder serves {len(self.sources)} models ({', '.join(self.names)}): "
                    "name one in the request's `model` field"
                )
            if not self.sources:
                raise ModelNotReady("this encoder serves no model yet (its models directory is empty)")
            return self._loaded_or_not_ready(self.sources[0].name)
        if model in self.names:
            return self._loaded_or_not_ready(model)
        for runtime in self.served:
            if runtime.fingerprint == model:
                return runtime
        if not self.complete and FINGERPRINT.fullmatch(model):
            raise ModelNotReady(f"model {model[:12]} may be one still loading; retry shortly")
        raise ModelNotFound(f"this encoder does not serve model {model[:80]!r}; it serves {self.describe()}")

    def describe(self) -> str:
        """The served models for messages: name (fingerprint prefix), ..."""
        current = [
            f"{name} ({self._loaded[name].fingerprint[:12]})" if name in self._loaded else f"{name} (loading)"
            for name in self.names
        ]
        replaced = [
            f"{old.name}, replaced ({old.fingerprint[:12]})"
            for olds in self._replaced.values()
            for old in olds
        ]
        return ", ".join([*current, *replaced]) or "no model"

    def _loaded_or_not_ready(self, name: str) -> EncoderRuntime:
        runtime = self._loaded.get(name)
        if runtime is None:
            raise ModelNotReady(f"model {name!r} is still loading; retry shortly")
        return runtime

    async def close(self) -> None:
        runtimes, self._loaded = [*self.served, *self._closing.values()], {}
        self._replaced = {}
        for task in list(self._closing):
            task.cancel()
        for runtime in runtimes:
            await runtime.close()
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._preprocess.shutdown(wait=True, cancel_futures=True)
        self._text_checks.shutdown(wait=True, cancel_futures=True)
