"""Bulk embedding over StreamEmbedImages: several batches in flight, a deadline per batch,
and reconnects that re-send only the batches not yet answered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from clipsearch.encoder_client import (
    EncoderClient,
    EncoderInputError,
    EncoderModelNotFound,
    EncoderUnavailable,
)
from clipsearch.v1 import encoder_pb2

log = logging.getLogger(__name__)

# Codes worth a reconnect: the server went away, restarted, or is overloaded for a moment.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
# grpc-python's own status when the server vanishes while the client is still writing to a
# stream: a broken connection, not a server fault (the retries stay bounded either way).
_CLIENT_CORE_ERROR = "Internal error from Core"
_POLL_S = 0.25  # how often a wait for a result checks the oldest batch's deadline


@dataclass
class StreamBatch:
    """One request batch: its items go out as ImageItems, in order."""

    number: int
    item_ids: list[str]
    data: list[bytes]
    sent_at: float = 0.0


@dataclass
class StreamStats:
    batches: int = 0
    reconnects: int = 0
    sent_batches: int = 0  # includes re-sends after a reconnect
    errors: list[str] = field(default_factory=list)


ResultHandler = Callable[[StreamBatch, encoder_pb2.ImageBatchResult], Awaitable[None]]
BatchSource = Callable[[int], Awaitable[StreamBatch]]


class StreamEmbedder:
    """Runs numbered batches through one stream at a time, reconnecting on transient failures.

    `load(number)` builds batch `number` (it is called once per batch; the result is kept
    until the batch is answered, so a reconnect can re-send it). `handle` gets each result
    in order; when it returns, the batch counts as done.
    """

    def __init__(
        self,
        client: EncoderClient,
        *,
        fingerprint: str,
        concurrency: int,
        deadline_s: float,
        retries: int,
    ) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.retries = retries
        self.stats = StreamStats()

    async def run(self, batch_count: int, load: BatchSource, handle: ResultHandler) -> StreamStats:
        loaded: dict[int, StreamBatch] = {}
        next_number = 0  # lowest batch not yet done: results arrive in order
        failures = 0
        while next_number < batch_count:
            try:
                answered = await self._stream(next_number, batch_count, loaded, load, handle)
            except _StreamBroken as broken:
                next_number = broken.next_number
                if broken.answered:
                    failures = 0
                failures += 1
                if failures > self.retries:
                    raise EncoderUnavailable(
                        f"encoder at {self.client.target} failed {failures} times in a row: {broken.reason}"
                    ) from None
                self.stats.reconnects += 1
                delay = min(0.2 * 2 ** (failures - 1), 5.0)
                log.warning("encoder stream broke (%s); reconnecting in %.1f s", broken.reason, delay)
                await asyncio.sleep(delay)
                continue
            next_number = answered
        return self.stats

    async def _stream(
        self,
        first: int,
        batch_count: int,
        loaded: dict[int, StreamBatch],
        load: BatchSource,
        handle: ResultHandler,
    ) -> int:
        window = asyncio.Semaphore(self.concurrency)
        awaiting: deque[StreamBatch] = deque()

        async def requests() -> AsyncIterator[encoder_pb2.ImageBatch]:
            for number in range(first, batch_count):
                await window.acquire()
                if number not in loaded:
                    loaded[number] = await load(number)
                batch = loaded[number]
                batch.sent_at = time.monotonic()
                awaiting.append(batch)
                self.stats.sent_batches += 1
                yield encoder_pb2.ImageBatch(
                    items=[
                        encoder_pb2.ImageItem(id=item_id, data=data)
                        for item_id, data in zip(batch.item_ids, batch.data, strict=True)
                    ],
                    # The exact weights the run started with: a restarted encoder serving other
                    # weights under the same name answers NOT_FOUND instead of mixing vector spaces.
                    model=self.fingerprint,
                )

        call = self.client.stream_embed_images(requests())
        next_number = first
        try:
            while next_number < batch_count:
                reply = await self._read(call, awaiting)
                if not isinstance(reply, encoder_pb2.ImageBatchResult):  # grpc.aio.EOF
                    raise _StreamBroken("the stream ended before every batch was answered", next_number)
                batch = awaiting.popleft()
                window.release()
                self._check(batch, reply)
                await handle(batch, reply)
                loaded.pop(batch.number, None)
                self.stats.batches += 1
                next_number = batch.number + 1
            return next_number
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise EncoderInputError(exc.details() or "invalid input") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise EncoderModelNotFound(f"encoder at {self.client.target}: {exc.details()}") from None
            broken_connection = code == grpc.StatusCode.INTERNAL and _CLIENT_CORE_ERROR in (
                exc.details() or ""
            )
            if code not in RETRYABLE and not broken_connection:
                raise EncoderUnavailable(
                    f"encoder at {self.client.target}: {code.name}: {exc.details()}"
                ) from None
            raise _StreamBroken(
                f"{code.name}: {exc.details()}", next_number, answered=next_number > first
            ) from None
        except _StreamBroken as broken:
            broken.answered = next_number > first
            raise
        finally:
            call.cancel()

    async def _read(
        self, call: grpc.aio.StreamStreamCall, awaiting: deque[StreamBatch]
    ) -> encoder_pb2.ImageBatchResult | object:
        """The next result; gives up when the oldest batch in flight has waited past its deadline."""
        reading = asyncio.ensure_future(call.read())
        while True:
            done, _ = await asyncio.wait({reading}, timeout=_POLL_S)
            if done:
                return reading.result()
            if awaiting and time.monotonic() - awaiting[0].sent_at > self.deadline_s:
                reading.cancel()
                raise _StreamBroken(
                    f"no result for batch {awaiting[0].number} within {self.deadline_s:g} s",
                    awaiting[0].number,
                )

    def _check(self, batch: StreamBatch, reply: encoder_pb2.ImageBatchResult) -> None:
        if reply.model_fingerprint and reply.model_fingerprint != self.fingerprint:
            raise EncoderUnavailable(
                f"the encoder at {self.client.target} switched models during the run "
                f"({self.fingerprint[:12]} -> {reply.model_fingerprint[:12]}); run the indexer again"
            )
        returned = [r.id for r in reply.results]
        if returned != batch.item_ids:
            raise EncoderUnavailable(
                f"encoder answered batch {batch.number} with {len(returned)} results for "
                f"{len(batch.item_ids)} items (ids out of order or missing)"
            )


class _StreamBroken(Exception):
    def __init__(self, reason: str, next_number: int, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.next_number = next_number
        self.answered = answered


def batch_ranges(total: int, size: int) -> Sequence[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]
