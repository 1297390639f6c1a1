"""Dynamic micro-batching: concurrent requests share one model forward pass.

Requests put their items on a queue; a collector task closes a batch when it
holds `max_batch_size` items or when its oldest item has waited `max_wait_ms`,
runs the batch on the single inference thread (off the event loop), and hands
each request its rows. A request larger than a batch is split into chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

Item = TypeVar("Item")
BatchFn = Callable[[list[Item]], np.ndarray]
BatchObserver = Callable[[int], None]


@dataclass
class _Work(Generic[Item]):
    items: list[Item]
    future: asyncio.Future[np.ndarray]
    enqueued_at: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[Item]):
    """Runs `batch_fn` (list of items -> (n, dim) rows) on `executor`, batching across callers.

    With `enabled=False` every request runs alone, in chunks of at most
    `max_batch_size` items (the baseline the benchmark compares against).
    """

    def __init__(
        self,
        batch_fn: BatchFn[Item],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        enabled: bool = True,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._batch_fn = batch_fn
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._enabled = enabled
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Work[Item]] = asyncio.Queue()
        self._pending: _Work[Item] | None = None  # took from the queue, did not fit the last batch
        self._collector: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._enabled and self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect_forever())

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        # Nothing should be left after a graceful stop; never leave a caller hanging.
        leftovers = [self._pending] if self._pending is not None else []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for work in leftovers:
            work.future.cancel()
        self._pending = None

    async def submit(self, items: Sequence[Item]) -> np.ndarray:
        """Embed `items`; rows come back in the same order."""
        chunks = [
            list(items[i : i + self._max_batch_size]) for i in range(0, len(items), self._max_batch_size)
        ]
        if not self._enabled:
            return np.concatenate([await self._run(chunk) for chunk in chunks])
        if self._collector is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures = []
        for chunk in chunks:
            work = _Work(chunk, loop.create_future())
            self._queue.put_nowait(work)
            futures.append(work.future)
        return np.concatenate(await asyncio.gather(*futures))

    async def _run(self, items: list[Item]) -> np.ndarray:
        if self._on_batch is not None:
            self._on_batch(len(items))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._batch_fn, items)

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
            batch = [work for work in await self._next_batch() if not work.future.done()]
            if not batch:
                continue  # every caller in it gave up (cancelled)
            items = [item for work in batch for item in work.items]
            try:
                rows = await self._run(items)
            except asyncio.CancelledError:
                for work in batch:
                    work.future.cancel()
                raise
            except Exception as exc:  # the batch failed: every caller in it sees the error
                for work in batch:
                    if not work.future.done():
                        work.future.set_exception(exc)
                continue
            start = 0
            for work in batch:
                end = start + len(work.items)
                if not work.future.done():
                    work.future.set_result(rows[start:end])
                start = end
