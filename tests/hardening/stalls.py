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
from dataclasses import dataclass, field
from types import TracebackType

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
        # 503 is the overload answer (with Retry-After); anything else 5xx is a fault.
        return sum(count for status, count in self.statuses.items() if status >= 500 and status != 503)

    def line(self) -> str:
        worst = max(self.latencies, default=0.0)
        statuses = ", ".join(f"{status} x{count}" for status, count in sorted(self.statuses.items()))
        return (
            f"  {self.family}: {len(self.latencies)} good requests ({statuses}), "
            f"{self.stalls} stalls over {self.threshold_s * 1000:.0f} ms "
            f"(baseline p50 {self.baseline_s * 1000:.1f} ms), slowest {worst * 1000:.0f} ms"
        )


REPORTS: list[StallReport] = []


class GoodClient:
    """`with GoodClient(port, "family"):` queries `port` in a thread for the duration of the block."""

    def __init__(self, port: int, family: str) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.family = family
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"good-client-{family}", daemon=True)
        self.report: StallReport | None = None

    def __enter__(self) -> StallReport:
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            timings = []
            for _ in range(BASELINE_REQUESTS):
                started = time.monotonic()
                client.get(GOOD_QUERY).raise_for_status()
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
        with httpx.Client(base_url=self.base_url, timeout=60.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get(GOOD_QUERY).status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all
                self.report.latencies.append(time.monotonic() - started)
                self.report.statuses[status] = self.report.statuses.get(status, 0) + 1
                time.sleep(0.01)


def summary() -> str:
    lines = ["good client beside the hostile families (stalls: answers over the threshold):"]
    lines += [report.line() for report in REPORTS]
    return "\n".join(lines)
