"""A well-behaved client that keeps querying while hostile inputs go in, to see whether they stall it.

Stalls are counted, never asserted as timings: a stall is an answer slower than several
times the client's own latency before the hostile family started (and at least a second),
so noise on a loaded machine does not count while a request that blocks the server does.
The counts are printed at the end of the run (conftest's terminal summary).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import httpx

STALL_FACTOR = 5.0
STALL_FLOOR_S = 1.0
BASELINE_REQUESTS = 20
GOOD_QUERY = "/api/v1/search/text?q=a%20handwritten%20seven&k=3"


@dataclass
class StallReport:
    family: str
    baseline_s: float
    threshold_s: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def stalls(self) -> int:
        return sum(latency > self.threshold_s for latency in self.latencies)

    @property
    def server_errors(self) -> int:
        # 503 is the overload answer (with Retry-After), as is RESOURCE_EXHAUSTED (500 + 8) in gRPC;
        # anything else 5xx, or no answer (0), is a fault.
        return sum(
            count
            for status, count in self.statuses.items()
            if status == 0 or (status >= 500 and status not in (503, 508))
        )

    def line(self) -> str:
        worst = max(self.latencies, default=0.0)
        statuses = ", ".join(f"{status} x{count}" for status, count in sorted(self.statuses.items()))
        return (
            f"  {self.family}: {len(self.latencies)} good requests ({statuses}), "
            f"{self.stalls} stalls over {self.threshold_s * 1000:.0f} ms "
            f"(baseline p50 {self.baseline_s * 1000:.1f} ms), slowest {worst * 1000:.0f} ms"
        )


REPORTS: list[StallReport] = []


GoodCall = Callable[[], int]  # one good request; its status (HTTP, or 200 for a gRPC OK)


def http_good_call(port: int) -> tuple[GoodCall, Callable[[], None]]:
    """A keep-alive HTTP client's good text query, and how to close the client."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0)

    def call() -> int:
        try:
            return client.get(GOOD_QUERY).status_code
        except httpx.HTTPError:
            return 0  # no answer at all

    return call, client.close


def grpc_good_call(call: Callable[[], object]) -> GoodCall:
    """A gRPC call as a good request: 200 when it succeeds, else 500 + its code's number."""

    def good() -> int:
        try:
            call()
        except grpc.RpcError as exc:
            return 500 + exc.code().value[0]
        return 200

    return good


class GoodClient:
    """`with GoodClient(call, "family"):` makes good calls in a thread for the duration of the block."""

    def __init__(self, call: GoodCall, family: str) -> None:
        self.call = call
        self.family = family
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"good-client-{family}", daemon=True)
        self.report: StallReport | None = None

    def __enter__(self) -> StallReport:
        timings = []
        for _ in range(BASELINE_REQUESTS):
            started = time.monotonic()
            assert self.call() == 200, f"the good client's baseline call failed ({self.family})"
            timings.append(time.monotonic() - started)
        baseline = statistics.median(timings)
        self.report = StallReport(self.family, baseline, max(STALL_FLOOR_S, STALL_FACTOR * baseline))
        REPORTS.append(self.report)
        self._thread.start()
        return self.report

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        assert self.report is not None
        while not self._stop.is_set():
            started = time.monotonic()
            status = self.call()
            self.report.latencies.append(time.monotonic() - started)
            self.report.statuses[status] = self.report.statuses.get(status, 0) + 1
            time.sleep(0.01)


def summary() -> str:
    lines = ["good client beside the hostile families (stalls: answers over the threshold):"]
    lines += [report.line() for report in REPORTS]
    return "\n".join(lines)
