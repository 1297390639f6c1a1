"""Async client for the encoder service, used by the indexer and the gateway.

Every call has a deadline (and no later than the request's, clipsearch.overload.DEADLINE);
UNAVAILABLE is retried with backoff, INVALID_ARGUMENT becomes EncoderInputError (the
caller's fault), RESOURCE_EXHAUSTED EncoderOverloaded (shed: not retried), NOT_FOUND (the
model named is not served there) EncoderModelNotFound, anything else EncoderUnavailable.
Each call carries the current request id (`clipsearch.logs`) as metadata `x-request-id`.

Every call may name its model (`model`: the name the encoder serves it under, or
its fingerprint); an empty name means the encoder's only model, and is refused by
an encoder that serves several.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, TypeVar, cast

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipsearch.logs import REQUEST_ID_HEADER, current_request_id
from clipsearch.overload import DeadlineExpired, retry_pushback_s, time_left
from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc

T = TypeVar("T")
EmbedKind = Literal["text", "image", "sketch"]

# Big enough for a batch of full-size photos; the server sets its own cap.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
API_KEY_HEADER = "x-api-key"
ENCODER_SERVICE = "clipsearch.v1.Encoder"


def model_health_service(model: str) -> str:
    """The grpc.health.v1 service name of one served model (by name or fingerprint)."""
    return f"{ENCODER_SERVICE}/{model}"


class ImageNormalization(IntEnum):
    """How EmbedImages brings a picture into the model's domain (the proto's ImageNormalization)."""

    AUTO = encoder_pb2.IMAGE_NORMALIZATION_AUTO  # normalise pictures that do not look like the model's
    OFF = encoder_pb2.IMAGE_NORMALIZATION_OFF  # embed every picture as it is


class EncoderError(RuntimeError):
    pass


class EncoderInputError(EncoderError):
    """The encoder rejected the input (INVALID_ARGUMENT); the message says why."""


class EncoderUnavailable(EncoderError):
    """The encoder could not be reached or failed; try again later."""


class EncoderOverloaded(EncoderUnavailable):
    """The encoder refused the call at once for lack of capacity (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EncoderModelNotFound(EncoderUnavailable):
    """The encoder does not serve the model named (NOT_FOUND); the message lists the ones it serves.

    A kind of unavailability: the input is fine, this encoder just cannot embed it with that model.
    """


@dataclass(frozen=True)
class Embeddings:
    """One embed call's answer: (n, dim) unit rows, the weights that made them, and per item the
    normalisation applied before embedding ("none", "mnist", ...; empty for texts)."""

    vectors: np.ndarray
    fingerprint: str
    normalizations: list[str]


def embeddings_to_array(embeddings: Sequence[encoder_pb2.Embedding]) -> np.ndarray:
    if not embeddings:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray([list(e.values) for e in embeddings], dtype=np.float32)


class EncoderClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        api_key: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self._metadata = ((API_KEY_HEADER, api_key),) if api_key else None
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Several encoder replicas behind one DNS name share the load.
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.enable_retries", 0),
                # Reconnect within a couple of seconds once a restarted encoder is back
                # (gRPC's default backoff grows to two minutes during a long outage).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = encoder_pb2_grpc.EncoderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> EncoderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _timeout(self) -> float:
        """The call's deadline: `timeout_s`, and no more than the request it serves has left
        (never zero: gRPC takes that for none; a spent deadline fails the call at once)."""
        left = time_left()
        return self.timeout_s if left is None else max(0.001, min(self.timeout_s, left))

    def _call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        request_id = current_request_id()
        if request_id is None:
            return self._metadata
        return (*(self._metadata or ()), (REQUEST_ID_HEADER, request_id))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(self.retries + 1):
            left = time_left()
            if left is not None and left <= 0:  # the request this call is for has run out of time
                raise DeadlineExpired("the deadline passed before the encoder was called")
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED
                    and (left := time_left()) is not None
                    and left <= 0
                ):
                    raise DeadlineExpired("the deadline passed while the encoder worked") from None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise EncoderInputError(exc.details() or "invalid input") from None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # shed: not retried here, the caller is told
                    raise EncoderOverloaded(
                        f"encoder at {self.target}: {exc.details()}",
                        retry_pushback_s(exc.trailing_metadata()),
                    ) from None
                if code == grpc.StatusCode.NOT_FOUND:
                    raise EncoderModelNotFound(f"encoder at {self.target}: {exc.details()}") from None
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise EncoderUnavailable(f"encoder at {self.target}: {code.name}: {exc.details()}") from None
        raise AssertionError("unreachable")

    async def serving(self, model: str = "") -> bool:
        """True when the encoder's health service says SERVING: the whole server (every model
        loaded), or with `model` that one model."""
        service = model_health_service(model) if model else ""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(self.timeout_s, 2.0)
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def model_info(self, model: str = "") -> encoder_pb2.ModelInfo:
        return await self._call(
            lambda: self._stub.GetModelInfo(
                encoder_pb2.GetModelInfoRequest(model=model),
                timeout=self._timeout(),
                metadata=self._call_metadata(),
            )
        )

    async def list_models(self) -> list[encoder_pb2.ModelInfo]:
        """Every model the encoder serves (loaded), in its configured order."""
        reply = await self._call(
            lambda: self._stub.ListModels(
                encoder_pb2.ListModelsRequest(), timeout=self._timeout(), metadata=self._call_metadata()
            )
        )
        return list(reply.models)

    async def embed(
        self,
        kind: EmbedKind,
        items: Sequence[str] | Sequence[bytes],
        *,
        model: str = "",
        normalization: ImageNormalization = ImageNormalization.AUTO,
    ) -> Embeddings:
        """Embed texts, encoded images or canvas sketches with one model.

        `normalization` applies to images only: AUTO brings pictures that do not look like the
        model's own images into its domain (the answer says per item what was applied).
        """
        reply = await self._call(lambda: self._embed_call(kind, items, model, normalization))
        return Embeddings(
            vectors=embeddings_to_array(reply.embeddings),
            fingerprint=reply.model_fingerprint,
            normalizations=list(reply.normalizations),
        )

    def _embed_call(
        self,
        kind: EmbedKind,
        items: Sequence[str] | Sequence[bytes],
        model: str,
        normalization: ImageNormalization,
    ) -> Awaitable[encoder_pb2.EmbedResponse]:
        options = {"timeout": self._timeout(), "metadata": self._call_metadata()}
        if kind == "text":
            texts = cast("list[str]", list(items))
            return self._stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=texts, model=model), **options)
        datas = cast("list[bytes]", list(items))  # the protobuf message checks the types
        if kind == "image":
            wire = (
                encoder_pb2.IMAGE_NORMALIZATION_OFF
                if normalization is ImageNormalization.OFF
                else encoder_pb2.IMAGE_NORMALIZATION_AUTO
            )
            request = encoder_pb2.EmbedImagesRequest(images=datas, model=model, normalization=wire)
            return self._stub.EmbedImages(request, **options)
        if kind == "sketch":
            return self._stub.EmbedSketches(
                encoder_pb2.EmbedSketchesRequest(sketches=datas, model=model), **options
            )
        raise ValueError(f"unknown kind {kind!r}: text, image or sketch")

    async def embed_texts(self, texts: Sequence[str], *, model: str = "") -> np.ndarray:
        return (await self.embed("text", texts, model=model)).vectors

    async def embed_images(self, images: Sequence[bytes], *, model: str = "") -> np.ndarray:
        return (await self.embed("image", images, model=model)).vectors

    async def embed_sketches(self, sketches: Sequence[bytes], *, model: str = "") -> np.ndarray:
        return (await self.embed("sketch", sketches, model=model)).vectors

    def stream_embed_images(
        self, batches: AsyncIterator[encoder_pb2.ImageBatch], timeout_s: float | None = None
    ) -> grpc.aio.StreamStreamCall:
        """Bulk embedding: one ImageBatchResult per ImageBatch, in order; per-item errors inline.

        Each batch names its model (`ImageBatch.model`, the same for every batch of the stream);
        indexed images are embedded as they are. The caller owns retries of a broken stream (it
        knows which batches were answered).
        """
        return self._stub.StreamEmbedImages(batches, timeout=timeout_s, metadata=self._call_metadata())
