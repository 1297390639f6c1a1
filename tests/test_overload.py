"""Admission and the batcher's bounds: work past capacity is refused at once, never queued without end."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from clipsearch.batching import MicroBatcher
from clipsearch.overload import DEADLINE, Admission, DeadlineExpired, Overloaded, retry_pushback_s


def admission(**overrides: float) -> Admission:
    values: dict[str, float] = {"max_in_flight": 2, "max_queued": 2, "max_wait_s": 5.0, **overrides}
    return Admission(what="tests", retry_after_s=2.0, **values)  # type: ignore[arg-type]


async def hold(gate: Admission, release: asyncio.Event, started: list[int], number: int) -> int:
    async with gate.slot():
        started.append(number)
        await release.wait()
    return number


async def test_admits_up_to_capacity_queues_a_few_in_order_and_refuses_the_rest_at_once() -> None:
    gate, release, started = admission(), asyncio.Event(), []
    holders = [asyncio.create_task(hold(gate, release, started, n)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert (gate.in_flight, gate.queued, started) == (2, 2, [0, 1])
    refused_at = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        async with gate.slot():
            pass
    assert time.monotonic() - refused_at < 0.5  # at once, not after the wait
    assert refused.value.retry_after_s == 2.0
    release.set()
    assert await asyncio.gather(*holders) == [0, 1, 2, 3]
    assert started == [0, 1, 2, 3]  # the waiters in the order they came
    assert (gate.in_flight, gate.queued, gate.refused) == (0, 0, 1)


async def test_a_wait_is_bounded_by_max_wait_and_by_the_deadline() -> None:
    gate, release = admission(max_in_flight=1, max_wait_s=0.05), asyncio.Event()
    holder = asyncio.create_task(hold(gate, release, [], 0))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        async with gate.slot():
            pass
    with pytest.raises(DeadlineExpired):
        async with gate.slot(deadline=time.monotonic() + 0.01):
            pass
    token = DEADLINE.set(time.monotonic() - 1)  # the request's own deadline, already passed
    try:
        with pytest.raises(DeadlineExpired):
            async with gate.slot():
                pass
    finally:
        DEADLINE.reset(token)
    release.set()
    await holder
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_a_waiter_that_goes_away_gives_up_its_place_and_any_slot_it_was_handed() -> None:
    gate, release, started = admission(max_in_flight=1), asyncio.Event(), []
    first = asyncio.create_task(hold(gate, release, started, 0))
    await asyncio.sleep(0.01)
    leaving = asyncio.create_task(hold(gate, release, started, 1))
    staying = asyncio.create_task(hold(gate, release, started, 2))
    await asyncio.sleep(0.01)
    leaving.cancel()
    release.set()
    await asyncio.gather(first, staying)
    assert started == [0, 2]
    assert (gate.in_flight, gate.queued) == (0, 0)


def batcher(run_gate: asyncio.Event, **bounds: float) -> MicroBatcher[int]:
    async def run(items: list[int]) -> np.ndarray:
        await run_gate.wait()
        return np.asarray(items, dtype=np.float32)[:, None]

    return MicroBatcher(run, max_batch_size=4, max_wait_ms=0.0, retry_after_s=3.0, **bounds)  # type: ignore[arg-type]


async def test_the_batcher_refuses_past_its_queue_and_drops_what_waited_too_long() -> None:
    gate = asyncio.Event()
    queue = batcher(gate, max_queued_items=8, max_queue_wait_s=0.05)
    queue.start()
    try:
        running = asyncio.create_task(queue.submit([0, 1, 2, 3]))  # taken at once: the batch runs
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(queue.submit([n])) for n in range(8)]
        await asyncio.sleep(0.01)
        assert queue.queued_items == 8
        with pytest.raises(Overloaded) as refused:
            await queue.submit([99])
        assert refused.value.retry_after_s == 3.0
        bulk = asyncio.create_task(queue.submit([7, 7], interactive=False))  # bounded by its caller
        await asyncio.sleep(0.1)  # past the queue wait
        gate.set()
        assert (await running)[:, 0].tolist() == [0, 1, 2, 3]
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(outcome, Overloaded) for outcome in outcomes)  # waited too long: not run
        assert (await bulk)[:, 0].tolist() == [7, 7]  # bulk work waits
        assert queue.queued_items == 0
    finally:
        await queue.close()


async def test_the_batcher_never_starts_work_past_its_deadline_and_frees_cancelled_places() -> None:
    gate = asyncio.Event()
    queue = batcher(gate, max_queued_items=4)
    queue.start()
    try:
        running = asyncio.create_task(queue.submit([0, 1, 2, 3]))
        await asyncio.sleep(0.01)
        expiring = asyncio.create_task(queue.submit([5], deadline=time.monotonic() + 0.02))
        leaving = asyncio.create_task(queue.submit([6, 6, 6]))
        await asyncio.sleep(0.01)
        assert queue.queued_items == 4
        leaving.cancel()
        await asyncio.sleep(0)
        assert queue.queued_items == 1  # the caller that went away left the queue at once
        await asyncio.sleep(0.05)
        gate.set()
        await running
        with pytest.raises(DeadlineExpired):
            await expiring
    finally:
        await queue.close()


def test_retry_pushback_is_read_from_trailing_metadata() -> None:
    assert retry_pushback_s((("grpc-retry-pushback-ms", "1500"),)) == 1.5
    assert retry_pushback_s((("other", "1"),)) == 1.0
    assert retry_pushback_s((("grpc-retry-pushback-ms", "soon"),)) == 1.0
