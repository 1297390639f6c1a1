"""MicroBatcher on its own: batches across callers, keeps order, splits big requests, passes errors on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clipsearch.batching import MicroBatcher, on_executor
from clipsearch.overload import DEADLINE


class Recorder:
    """A batch function that returns each item as a one-value row and records batch sizes and threads."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[float]) -> np.ndarray:
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise ValueError("boom")
        return np.asarray(items, dtype=np.float32)[:, None]


@pytest.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    yield pool
    pool.shutdown()


async def _started(
    recorder: Recorder, executor: ThreadPoolExecutor, **options: object
) -> MicroBatcher[float]:
    settings: dict = {"max_batch_size": 8, "max_wait_ms": 50.0, **options}
    batcher: MicroBatcher[float] = MicroBatcher(on_executor(recorder, executor), **settings)
    batcher.start()
    return batcher


async def test_concurrent_requests_share_batches_and_get_their_own_rows(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher = await _started(recorder, executor)
    try:
        results = await asyncio.gather(*[batcher.submit([float(i), float(i) + 0.5]) for i in range(10)])
    finally:
        await batcher.close()
    for i, rows in enumerate(results):
        np.testing.assert_array_equal(rows[:, 0], [i, i + 0.5])
    assert sum(recorder.sizes) == 20
    assert max(recorder.sizes) <= 8
    assert len(recorder.sizes) < 10  # fewer forward passes than requests
    assert recorder.threads == {"inference_0"}  # off the event loop, on the one inference thread


async def test_a_request_larger_than_a_batch_is_split_in_order(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher = await _started(recorder, executor, max_wait_ms=1.0)
    try:
        rows = await batcher.submit([float(i) for i in range(20)])
    finally:
        await batcher.close()
    np.testing.assert_array_equal(rows[:, 0], np.arange(20))
    assert recorder.sizes == [8, 8, 4]


async def test_without_batching_each_request_runs_alone(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher = await _started(recorder, executor, enabled=False)
    results = await asyncio.gather(*[batcher.submit([float(i)]) for i in range(5)])
    await batcher.close()
    assert [float(r[0, 0]) for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert recorder.sizes == [1] * 5


async def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on(
    executor: ThreadPoolExecutor,
) -> None:
    recorder = Recorder(fail_on=13.0)
    batcher = await _started(recorder, executor)
    try:
        outcomes = await asyncio.gather(batcher.submit([1.0]), batcher.submit([13.0]), return_exceptions=True)
        assert all(isinstance(outcome, ValueError) for outcome in outcomes)
        rows = await batcher.submit([2.0])
    finally:
        await batcher.close()
    assert float(rows[0, 0]) == 2.0


async def test_a_cancelled_caller_does_not_break_the_others(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher = await _started(recorder, executor, max_wait_ms=30.0)
    try:
        doomed = asyncio.ensure_future(batcher.submit([7.0]))
        survivor = asyncio.ensure_future(batcher.submit([8.0]))
        await asyncio.sleep(0)
        doomed.cancel()
        rows = await survivor
    finally:
        await batcher.close()
    assert float(rows[0, 0]) == 8.0


async def test_zero_wait_still_batches_what_is_already_queued(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher = await _started(recorder, executor, max_wait_ms=0.0)
    try:
        results = await asyncio.gather(*[batcher.submit([float(i)]) for i in range(6)])
    finally:
        await batcher.close()
    assert [float(r[0, 0]) for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(recorder.sizes) < 6


async def test_isolated_failures_fail_only_the_request_at_fault(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder(fail_on=13.0)
    batcher = await _started(recorder, executor, isolate=lambda exc: isinstance(exc, ValueError))
    try:
        outcomes = await asyncio.gather(
            batcher.submit([1.0]), batcher.submit([13.0]), batcher.submit([2.0, 3.0]), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert isinstance(outcomes[1], ValueError)
    assert [row.ravel().tolist() for row in outcomes if isinstance(row, np.ndarray)] == [[1.0], [2.0, 3.0]]
    assert recorder.sizes[0] == 4  # they shared a call first, then ran alone: 1, 1, 2
    assert sorted(recorder.sizes[1:]) == [1, 1, 2]


async def test_up_to_max_in_flight_batches_run_at_once_and_the_rest_wait_together() -> None:
    running, most, sizes = 0, 0, []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(items: list[float]) -> np.ndarray:
        nonlocal running, most
        running += 1
        most = max(most, running)
        sizes.append(len(items))
        started.set()
        await release.wait()
        running -= 1
        return np.asarray(items, dtype=np.float32)[:, None]

    batcher: MicroBatcher[float] = MicroBatcher(slow, max_batch_size=8, max_wait_ms=0.0, max_in_flight=2)
    batcher.start()
    try:
        first = []
        for i in range(2):  # one at a time, so each takes a slot of its own
            first.append(asyncio.ensure_future(batcher.submit([float(i)])))
            await started.wait()
            started.clear()
        later = [asyncio.ensure_future(batcher.submit([float(i)])) for i in range(2, 7)]
        await asyncio.sleep(0.02)
        assert sizes == [1, 1]  # both slots busy: the five later requests wait
        release.set()
        results = await asyncio.gather(*first, *later)
    finally:
        await batcher.close()
    assert [float(rows[0, 0]) for rows in results] == [float(i) for i in range(7)]
    assert most == 2
    assert sizes == [1, 1, 5]  # the five that waited went in one call


async def test_a_batch_runs_under_its_callers_deadline_not_the_starting_requests() -> None:
    """The batcher may be started inside a request (lazily, on the first query): that request's
    deadline must not become every later batch's."""
    seen: list[float | None] = []

    async def run(items: list[int]) -> np.ndarray:
        seen.append(DEADLINE.get())
        return np.asarray([[float(item)] for item in items])

    batcher: MicroBatcher[int] = MicroBatcher(run, max_batch_size=8, max_wait_ms=0.0)

    async def first_request() -> None:
        DEADLINE.set(time.monotonic() + 0.001)  # a caller with almost no time
        batcher.start()
        await asyncio.sleep(0.01)  # its time runs out

    await asyncio.create_task(first_request())
    try:
        later = time.monotonic() + 30.0
        rows = await asyncio.create_task(_with_deadline(batcher, [1, 2], later))
        unbounded = await asyncio.create_task(_with_deadline(batcher, [3], None))
    finally:
        await batcher.close()
    assert rows.tolist() == [[1.0], [2.0]]
    assert unbounded.tolist() == [[3.0]]
    assert seen == [later, None]


async def _with_deadline(batcher: MicroBatcher[int], items: list[int], deadline: float | None) -> np.ndarray:
    DEADLINE.set(deadline)
    return await batcher.submit(items)
