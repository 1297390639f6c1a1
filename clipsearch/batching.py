"""Dynamic micro-batching: concurrent requests share one call.

Requests put their items on a queue; a collector task closes a batch when it
holds `max_batch_size` items or when its oldest item has waited `max_wait_ms`,
runs it, and hands each request its rows. A request larger than a batch is
split into chunks. Two users:

- the encoder: concurrent requests share one model forward pass, on its single
  inference thread (`on_executor`);
- the gateway: concurrent text queries share one EmbedText call to the encoder,
  since each call costs the encoder about 1.1 ms of CPU whatever it carries.

With `max_in_flight` above 1, that many batches run at once (the gateway keeps
the encoder busy while the next call forms); `isolate` names failures that are
one item's fault, after which each request of the failed batch is retried
alone, so one bad query cannot fail the queries it happened to share a call with.

The queue is bounded (clipsearch.overload): past `max_queued_items` waiting, a
request is refused at once (`Overloaded`); work that waited past `max_queue_wait_s`
(`Overloaded`) or its deadline (`DeadlineExpired`; the caller's, `overload.DEADLINE`,
unless given) is failed instead of started, and work whose caller gave up is dropped.

A batch runs with the request ids of the requests it serves (`clipsearch.logs`), so the
gateway's shared calls carry them all to the encoder and log lines name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from clipsearch.logs import REQUEST_ID, current_request_id, joined_request_ids
from clipsearch.overload import DEADLINE, DeadlineExpired, Overloaded

Item = TypeVar("Item")
BatchFn = Callable[[list[Item]], np.ndarray]
BatchRunner = Callable[[list[Item]], Awaitable[np.ndarray]]
BatchObserver = Callable[[int], None]


def on_executor(batch_fn: BatchFn[Item], executor: Executor) -> BatchRunner[Item]:
    """A runner that calls the blocking `batch_fn` on `executor`, off the event loop."""

    async def run(items: list[Item]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(executor, batch_fn, items)

    return run


@dataclass
class _Work(Generic[Item]):
    items: list[Item]
    future: asyncio.Future[np.ndarray]
    deadline: float | None = None
    interactive: bool = True
    enqueued_at: float = field(default_factory=time.monotonic)
    queued: bool = True  # counted in the batcher's queued items
    request_id: str | None = field(default_factory=current_request_id)


class MicroBatcher(Generic[Item]):
    """Runs `run` (list of items -> (n, dim) rows) on batches gathered across callers.

    With `enabled=False` every request runs alone, in chunks of at most
    `max_batch_size` items (the baseline the benchmark compares against).
    """

    def __init__(
        self,
        run: BatchRunner[Item],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        enabled: bool = True,
        max_in_flight: int = 1,
        isolate: Callable[[Exception], bool] | None = None,
        on_batch: BatchObserver | None = None,
        max_queued_items: int | None = None,
        max_queue_wait_s: float | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        if max_batch_size < 1 or max_in_flight < 1:
            raise ValueError("max_batch_size and max_in_flight must be at least 1")
        self._max_queued_items = max_queued_items
        self._max_queue_wait_s = max_queue_wait_s
        self._retry_after_s = retry_after_s
        self._queued_items = 0
        self._run_batch = run
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._enabled = enabled
        self._isolate = isolate
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Work[Item]] = asyncio.Queue()
        self._pending: _Work[Item] | None = None  # took from the queue, did not fit the last batch
        self._collector: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._enabled and self._collector is None:
            # A context of its own: started inside a request, the collector (and every batch task
            # it creates) would otherwise carry that request's deadline and id for good.
            self._collector = asyncio.get_running_loop().create_task(
                self._collect_forever(), context=contextvars.Context()
            )

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        for task in list(self._running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running, return_exceptions=True)
        # Nothing should be left after a graceful stop; never leave a caller hanging.
        leftovers = [self._pending] if self._pending is not None else []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for work in leftovers:
            work.future.cancel()
        self._pending = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(
        self, items: Sequence[Item], *, deadline: float | None = None, interactive: bool = True
    ) -> np.ndarray:
        """Embed `items`; rows come back in the same order. Overloaded when the queue is full;
        Overloaded or DeadlineExpired when the work waited too long to start.

        Bulk work (`interactive=False`, bounded by its caller: a stream's batches in flight)
        counts in the queue but is neither refused for its length nor for its wait; only its
        deadline applies."""
        chunks = [
            list(items[i : i + self._max_batch_size]) for i in range(0, len(items), self._max_batch_size)
        ]
        if not self._enabled:
            return np.concatenate([await self._run(chunk) for chunk in chunks])
        if self._collector is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        limit = self._max_queued_items
        # A request larger than the whole queue still gets in when the queue is empty.
        if (
            interactive
            and limit is not None
            and self._queued_items
            and self._queued_items + len(items) > limit
        ):
            raise Overloaded(
                f"over capacity ({self._queued_items} items queued); retry in {self._retry_after_s:g} s",
                self._retry_after_s,
            )
        deadline = DEADLINE.get() if deadline is None else deadline
        loop = asyncio.get_running_loop()
        futures = []
        for chunk in chunks:
            work = _Work(chunk, loop.create_future(), deadline, interactive)
            self._queued_items += len(chunk)
            # A caller that gives up (cancelled, deadline) frees its place in the queue at once.
            work.future.add_done_callback(functools.partial(self._unqueue_done, work))
            self._queue.put_nowait(work)
            futures.append(work.future)
        return np.concatenate(await asyncio.gather(*futures))

    def _unqueue_done(self, work: _Work[Item], future: asyncio.Future[np.ndarray]) -> None:
        self._unqueue(work)

    def _unqueue(self, work: _Work[Item]) -> None:
        if work.queued:
            work.queued = False
            self._queued_items -= len(work.items)

    def _startable(self, work: _Work[Item], now: float) -> bool:
        """Whether to start `work`, failing it instead if it waited too long."""
        self._unqueue(work)
        if work.future.done():  # its caller gave up
            return False
        if work.deadline is not None and now >= work.deadline:
            work.future.set_exception(
                DeadlineExpired("the deadline passed while the work waited in the queue")
            )
            return False
        waited = now - work.enqueued_at
        if work.interactive and self._max_queue_wait_s is not None and waited > self._max_queue_wait_s:
            work.future.set_exception(
                Overloaded(
                    f"over capacity (waited {waited * 1000:.0f} ms in the queue); "
                    f"retry in {self._retry_after_s:g} s",
                    self._retry_after_s,
                )
            )
            return False
        return True

    async def _run(self, items: list[Item]) -> np.ndarray:
        if self._on_batch is not None:
            self._on_batch(len(items))
        return await self._run_batch(items)

    async def _next_batch(self) -> list[_Work[Item]]:
        first = self._pending if self._pending is not None else await self._queue.get()
        self._pending = None
        batch, size = [first], len(first.items)
        # Items that queued while the previous batch ran have already waited.
        deadline = first.enqueued_at + self._max_wait_s
        while size < self._max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                work = (
                    self._queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(self._queue.get(), timeout)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if size + len(work.items) > self._max_batch_size:
                self._pending = work
                break
            batch.append(work)
            size += len(work.items)
        return batch

    async def _collect_forever(self) -> None:
        while True:
            # Wait for a free slot before gathering, so a batch collects everything that queued
            # while the slots were busy.
            await self._slots.acquire()
            try:
                taken = await self._next_batch()
                now = time.monotonic()
                batch = [work for work in taken if self._startable(work, now)]
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue  # every caller in it gave up, or waited too long
            task = asyncio.get_running_loop().create_task(self._answer(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(self, batch: list[_Work[Item]]) -> None:
        # A task of its own: the ids and deadline set here are this batch's only. The batch is worth
        # doing until the last of its callers stops waiting.
        REQUEST_ID.set(joined_request_ids([work.request_id for work in batch]))
        deadlines = [work.deadline for work in batch]
        DEADLINE.set(None if None in deadlines else max(d for d in deadlines if d is not None))
        try:
            items = [item for work in batch for item in work.items]
            try:
                rows = await self._run(items)
            except asyncio.CancelledError:
                for work in batch:
                    work.future.cancel()
                raise
            except Exception as exc:
                if len(batch) > 1 and self._isolate is not None and self._isolate(exc):
                    await self._answer_alone(batch)
                    return
                for work in batch:  # the batch failed: every caller in it sees the error
                    if not work.future.done():
                        work.future.set_exception(exc)
                return
            start = 0
            for work in batch:
                end = start + len(work.items)
                if not work.future.done():
                    work.future.set_result(rows[start:end])
                start = end
        finally:
            self._slots.release()

    async def _answer_alone(self, batch: list[_Work[Item]]) -> None:
        """Each request of a failed batch on its own: only the one at fault sees the error."""
        for work in batch:
            if work.future.done():
                continue
            REQUEST_ID.set(work.request_id)
            try:
                rows = await self._run(work.items)
            except asyncio.CancelledError:
                for waiting in batch:
                    waiting.future.cancel()  # no-op for the answered ones
                raise
            except Exception as exc:
                work.future.set_exception(exc)
            else:
                work.future.set_result(rows)
