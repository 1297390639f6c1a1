"""The clipsearch.v1.Encoder gRPC methods: validation, status codes, metrics, messages.

Caller mistakes become INVALID_ARGUMENT with a message naming the item (an
unnamed call to a server of several models is one); a model the server does not
serve is NOT_FOUND, listing the served ones; calls before the model is loaded get
UNAVAILABLE; only our own faults are INTERNAL.

NOT_FOUND rather than INVALID_ARGUMENT for an unknown model: the request is well
formed and the caller's query may be fine; what is missing is the model on this
server (a deployment matter: another encoder may serve it). Callers can tell it
from a bad input: the gateway answers 503 for that collection, not 400 for the query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from clipsearch.acceleration import CpuMode
from clipsearch.overload import DeadlineExpired, Overloaded, follow_deadline, pushback_metadata
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.metrics import EncoderMetrics
from services.encoder.runtime import (
    EncoderRuntime,
    InputError,
    ModelNotFound,
    ModelNotReady,
    ModelRegistry,
    Prepared,
)
from services.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:  # generic in the stubs only
    Context = grpc.aio.ServicerContext[Any, Any]
# Stream batches decoded and embedded ahead of the one being answered.
STREAM_BATCHES_IN_FLIGHT = 4


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, settings: EncoderSettings, metrics: EncoderMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: ModelRegistry | None = None  # set when the models start loading

    async def EmbedText(
        self, request: encoder_pb2.EmbedTextRequest, context: Context
    ) -> encoder_pb2.EmbedResponse:
        async def work(runtime: EncoderRuntime) -> encoder_pb2.EmbedResponse:
            # The repeated field itself: each text becomes a Python string only once it is checked.
            texts = request.texts
            self._check_count(len(texts), "texts")
            rows = await runtime.embed_texts(texts)
            self.metrics.items.labels(model=runtime.name, kind="text").inc(len(texts))
            return self._response(runtime, rows)

        return await self._unary("EmbedText", context, request.model, work)

    async def EmbedImages(
        self, request: encoder_pb2.EmbedImagesRequest, context: Context
    ) -> encoder_pb2.EmbedResponse:
        auto = request.normalization == encoder_pb2.IMAGE_NORMALIZATION_AUTO
        return await self._unary(
            "EmbedImages",
            context,
            request.model,
            lambda runtime: self._embed_all(runtime, request.images, sketch=False, auto_domain=auto),
        )

    async def EmbedSketches(
        self, request: encoder_pb2.EmbedSketchesRequest, context: Context
    ) -> encoder_pb2.EmbedResponse:
        return await self._unary(
            "EmbedSketches",
            context,
            request.model,
            lambda runtime: self._embed_all(runtime, request.sketches, sketch=True),
        )

    async def GetModelInfo(
        self, request: encoder_pb2.GetModelInfoRequest, context: Context
    ) -> encoder_pb2.ModelInfo:
        async def work(runtime: EncoderRuntime) -> encoder_pb2.ModelInfo:
            return self._model_info(runtime)

        return await self._unary("GetModelInfo", context, request.model, work)

    async def ListModels(
        self, request: encoder_pb2.ListModelsRequest, context: Context
    ) -> encoder_pb2.ListModelsResponse:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            # The loaded ones: a model still loading cannot be called yet (health says which). Weights a
            # reload replaced follow their name's current ones, under the same name.
            return encoder_pb2.ListModelsResponse(
                models=[self._model_info(runtime) for runtime in self._registry().served]
            )
        except Exception as exc:
            code, details = self._status_of(exc, "ListModels")
        finally:
            self._observe("ListModels", code, started)
        await context.abort(code, details)

    def _model_info(self, runtime: EncoderRuntime) -> encoder_pb2.ModelInfo:
        checkpoint = runtime.checkpoint
        return encoder_pb2.ModelInfo(
            model_name=checkpoint.name,
            fingerprint=checkpoint.fingerprint,
            embedding_dim=checkpoint.embedding_dim,
            image_size=checkpoint.image_size,
            dtype=serving_dtype(runtime),
            device=str(checkpoint.device),
            sketch_normalization=checkpoint.meta.sketch_normalization.value,
            logit_scale=checkpoint.logit_scale,
            max_text_tokens=checkpoint.max_text_tokens,
            max_batch_items=self.settings.max_items_per_request,
            architecture=checkpoint.architecture,
            name=runtime.name,
        )

    async def StreamEmbedImages(
        self, request_iterator: AsyncIterable[encoder_pb2.ImageBatch], context: Context
    ) -> AsyncIterator[encoder_pb2.ImageBatchResult]:
        started, details = time.perf_counter(), ""
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        trailers: tuple[tuple[str, str], ...] = ()
        follow_deadline(context)
        try:
            registry = self._registry()
            # The reader starts work on each batch as it arrives; answers go out in order.
            in_flight: asyncio.Queue[asyncio.Task[encoder_pb2.ImageBatchResult] | None] = asyncio.Queue(
                maxsize=STREAM_BATCHES_IN_FLIGHT
            )
            reader = asyncio.create_task(self._read_stream(registry, request_iterator, in_flight))
            try:
                while (task := await in_flight.get()) is not None:
                    yield await task
                await reader  # raises what stopped the reader, if anything
            finally:
                reader.cancel()
                while not in_flight.empty():
                    if (leftover := in_flight.get_nowait()) is not None:
                        leftover.cancel()
        except grpc.aio.AbortError:
            # Already answered (a batch that does not decode, clipsearch.grpc_guard, which counts it).
            code = None
            raise
        except Exception as exc:
            code, details = self._status_of(exc, "StreamEmbedImages")
            trailers = _pushback(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if code is not None:
                self._observe("StreamEmbedImages", code, started)
        if code is not None and code != grpc.StatusCode.OK:
            await context.abort(code, details, trailers)

    async def _read_stream(
        self,
        registry: ModelRegistry,
        request_iterator: AsyncIterable[encoder_pb2.ImageBatch],
        in_flight: asyncio.Queue[asyncio.Task[encoder_pb2.ImageBatchResult] | None],
    ) -> None:
        first: EncoderRuntime | None = None
        try:
            async for batch in request_iterator:
                if len(batch.items) > self.settings.max_items_per_request:
                    raise InputError(
                        f"stream batch has {len(batch.items)} items; "
                        f"at most {self.settings.max_items_per_request} per batch"
                    )
                runtime = registry.resolve(batch.model)
                if first is None:
                    first = runtime
                elif runtime is not first:  # one stream, one vector space
                    raise InputError(
                        f"stream batch names model {batch.model!r}; this stream embeds with {first.name!r}"
                    )
                await in_flight.put(asyncio.create_task(self._embed_stream_batch(runtime, batch)))
        finally:
            await in_flight.put(None)

    async def _embed_stream_batch(
        self, runtime: EncoderRuntime, batch: encoder_pb2.ImageBatch
    ) -> encoder_pb2.ImageBatchResult:
        # Bulk work: bounded by the stream's batches in flight, not refused for the queue's length.
        prepared = await runtime.prepare([item.data for item in batch.items], sketch=False, interactive=False)
        good = [(p, value.pixels) for p, value in enumerate(prepared) if isinstance(value, Prepared)]
        rows = (
            await runtime.embed_pixels([value for _, value in good], interactive=False)
            if good
            else np.zeros((0, 0))
        )
        vectors = {position: row for (position, _), row in zip(good, rows, strict=True)}
        results = []
        for position, item in enumerate(batch.items):
            if position in vectors:
                embedding = encoder_pb2.Embedding(values=vectors[position].tolist())
                results.append(encoder_pb2.ImageResult(id=item.id, embedding=embedding))
            else:
                results.append(encoder_pb2.ImageResult(id=item.id, error=str(prepared[position])))
        self.metrics.items.labels(model=runtime.name, kind="image").inc(len(good))
        return encoder_pb2.ImageBatchResult(results=results, model_fingerprint=runtime.fingerprint)

    async def _embed_all(
        self, runtime: EncoderRuntime, datas: Sequence[bytes], *, sketch: bool, auto_domain: bool = False
    ) -> encoder_pb2.EmbedResponse:
        self._check_count(len(datas), "sketches" if sketch else "images")
        prepared = await runtime.prepare(datas, sketch=sketch, auto_domain=auto_domain)
        items: list[Prepared] = []
        for value in prepared:
            if isinstance(value, InputError):
                raise value  # the first bad item fails the call, as the contract says
            items.append(value)
        vectors = await runtime.embed_pixels([item.pixels for item in items])
        self.metrics.items.labels(model=runtime.name, kind="sketch" if sketch else "image").inc(len(items))
        return self._response(runtime, vectors, [item.normalization.value for item in items])

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise InputError(f"no {what} given: send at least one")
        if count > self.settings.max_items_per_request:
            raise InputError(
                f"{count} {what} in one request; the limit is {self.settings.max_items_per_request}"
            )

    def _registry(self) -> ModelRegistry:
        if self.models is None:
            raise ModelNotReady("the models are still loading; retry shortly")
        return self.models

    @staticmethod
    def _response(
        runtime: EncoderRuntime, rows: np.ndarray, normalizations: Sequence[str] = ()
    ) -> encoder_pb2.EmbedResponse:
        return encoder_pb2.EmbedResponse(
            embeddings=[encoder_pb2.Embedding(values=row.tolist()) for row in rows],
            model_fingerprint=runtime.fingerprint,
            normalizations=list(normalizations),
        )

    async def _unary(
        self, method: str, context: Context, model: str, work: Callable[[EncoderRuntime], Awaitable[T]]
    ) -> T:
        """Run `work` with the runtime of the model the call names; errors to status codes."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        follow_deadline(context)
        try:
            return await work(self._registry().resolve(model))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, details = self._status_of(exc, method)
            trailers = _pushback(exc)
        finally:
            self._observe(method, code, started)
        await context.abort(code, details, trailers)

    @staticmethod
    def _status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, InputError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if isinstance(exc, ModelNotFound):
            return grpc.StatusCode.NOT_FOUND, str(exc)
        if isinstance(exc, ModelNotReady):
            return grpc.StatusCode.UNAVAILABLE, str(exc)
        if isinstance(exc, Overloaded):  # refused at once, before any work: the caller retries later
            return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
        if isinstance(exc, DeadlineExpired):
            return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
        log.exception("%s failed", method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, f"internal error in {method}; see the encoder log"

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self.metrics.requests.labels(method=method, code=code.name).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - started)


def _pushback(exc: BaseException) -> tuple[tuple[str, str], ...]:
    return pushback_metadata(exc.retry_after_s) if isinstance(exc, Overloaded) else ()


def serving_dtype(runtime: EncoderRuntime) -> str:
    """What the model computes in: the checkpoint dtype, or the CPU speed mode that replaced it."""
    if runtime.embedder.cpu_mode is CpuMode.FP32:
        return str(runtime.checkpoint.dtype).removeprefix("torch.")
    return runtime.embedder.cpu_mode.value
