"""Shedding load instead of queueing it: what the services answer when asked for more than they can do.

A service that queues without bound answers everyone late once it is past its capacity,
and its queues hold memory until it falls over. Instead, work is admitted while it can
be done within a latency target and refused at once beyond that (the caller is told to
retry after a moment: HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED with
`grpc-retry-pushback-ms`). Two mechanisms, used by the gateway and the encoder:

- `Admission`: at most `max_in_flight` requests at once; up to `max_queued` more wait,
  each at most `max_wait_s` and never past its own deadline; the rest are refused at once.
- `MicroBatcher` (clipsearch.batching) holds at most `max_queued_items` items and fails
  work that waited past `max_queue_wait_s` or its deadline instead of starting it.

A request's deadline (the gRPC deadline its caller set) travels in `DEADLINE`, so work
done for it downstream is given no more time than it has left.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

# Pushback trailer of gRPC's retry design (gRFC A6): how long a refused caller should wait.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

# time.monotonic() by which the current request must be answered; None: no deadline.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("clipsearch_deadline", default=None)


class Overloaded(RuntimeError):
    """Refused for lack of capacity, before any work was done; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExpired(RuntimeError):
    """The request's deadline passed before its work started; the work was not done."""


def time_left(deadline: float | None = None) -> float | None:
    """Seconds until `deadline` (default: the current request's), None without one."""
    deadline = DEADLINE.get() if deadline is None else deadline
    return None if deadline is None else deadline - time.monotonic()


def pushback_metadata(retry_after_s: float) -> tuple[tuple[str, str], ...]:
    return ((RETRY_PUSHBACK_KEY, str(max(1, round(retry_after_s * 1000)))),)


def retry_pushback_s(metadata: Any, default: float = 1.0) -> float:
    """The wait a refusal's trailing metadata asks for (grpc-retry-pushback-ms)."""
    for key, value in metadata or ():
        if key == RETRY_PUSHBACK_KEY:
            try:
                return max(0.0, int(value) / 1000.0)
            except ValueError:
                return default
    return default


def follow_deadline(context: Any) -> None:
    """In a gRPC handler (its own task): the call's deadline becomes the request's DEADLINE."""
    remaining = context.time_remaining()
    if remaining is not None:
        DEADLINE.set(time.monotonic() + remaining)


class Admission:
    """Bounded concurrency with a bounded, time-limited wait; FIFO among those waiting."""

    def __init__(
        self, *, max_in_flight: int, max_queued: int, max_wait_s: float, retry_after_s: float = 1.0, what: str
    ) -> None:
        if max_in_flight < 1 or max_queued < 0 or max_wait_s < 0:
            raise ValueError("max_in_flight must be at least 1, max_queued and max_wait_s at least 0")
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.what = what
        self.in_flight = 0
        self.refused = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold a slot for the block; Overloaded (or DeadlineExpired) if none comes in time."""
        await self._acquire(DEADLINE.get() if deadline is None else deadline)
        try:
            yield
        finally:
            self._release()

    @property
    def full(self) -> bool:
        """Whether a request arriving now would be refused at once (for a front end to refuse it
        before reading it, at little cost)."""
        return self.in_flight >= self.max_in_flight and len(self._waiting) >= self.max_queued

    def refusal(self) -> Overloaded:
        """The refusal `slot()` gives when full (counted)."""
        return self._refusal(f"{self.what}: {self.in_flight} in progress and {len(self._waiting)} waiting")

    async def _acquire(self, deadline: float | None) -> None:
        if self.in_flight < self.max_in_flight and not self._waiting:
            self.in_flight += 1
            return
        if len(self._waiting) >= self.max_queued:
            raise self.refusal()
        wait_s = self.max_wait_s
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                raise DeadlineExpired(f"{self.what}: the deadline passed before the work could start")
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(granted)
        try:
            await asyncio.wait_for(asyncio.shield(granted), wait_s)
        except TimeoutError:
            if granted.done():  # granted just as the wait ran out: take it
                return
            self._waiting.remove(granted)
            granted.cancel()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired(
                    f"{self.what}: the deadline passed before the work could start"
                ) from None
            raise self._refusal(f"{self.what}: no capacity within {self.max_wait_s * 1000:.0f} ms") from None
        except BaseException:  # cancelled while waiting (the caller went away)
            if granted.done() and not granted.cancelled():
                self._release()  # the slot was handed over: pass it on
            elif granted in self._waiting:
                self._waiting.remove(granted)
                granted.cancel()
            raise

    def _release(self) -> None:
        # The slot goes straight to the longest waiter, so a newcomer cannot overtake it.
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    def _refusal(self, reason: str) -> Overloaded:
        self.refused += 1
        return Overloaded(f"over capacity ({reason}); retry in {self.retry_after_s:g} s", self.retry_after_s)
