"""CPU pinning for the services (`ENCODER_CPUS`, `GATEWAY_CPUS`; `cpuset` does it in Docker Compose).

Local request/response traffic makes Linux wake each process on the CPU of the
process that woke it, so the encoder, the gateway and their clients can pile onto
one core while another idles: measured on the 2-core development machine at 8
concurrent text queries, one CPU was 25% idle and the other 60%. Pinning each
service to cores of its own undoes that; whether it pays depends on the host.
On this 2-core VM it measured mixed (README, "Settings"), so nothing pins by default.
"""

from __future__ import annotations

import contextlib
import os
import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class CpuSpecError(ValueError):
    """A CPU list that cannot be used; the message says why."""


def parse_cpus(spec: str) -> set[int]:
    """CPUs from a Linux-style list: "0", "0-3", "0,2,4-5"."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        match = _RANGE.match(part)
        if not match:
            raise CpuSpecError(f"CPU list {spec!r}: write CPUs as 0, 0-3 or 0,2,4-5")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise CpuSpecError(f"CPU list {spec!r}: the range {part} runs backwards")
        cpus.update(range(first, last + 1))
    return cpus


def available_cpus() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def usable_cpus(spec: str) -> set[int]:
    """The CPUs of `spec`, checked to be ones this process may be pinned to here."""
    cpus = parse_cpus(spec)
    allowed = available_cpus()
    if not cpus <= allowed:
        missing = ",".join(str(cpu) for cpu in sorted(cpus - allowed))
        usable = ",".join(str(cpu) for cpu in sorted(allowed))
        raise CpuSpecError(f"CPU list {spec!r}: CPU {missing} is not available here (usable: {usable})")
    if not hasattr(os, "sched_setaffinity"):
        raise CpuSpecError("pinning to CPUs needs Linux (sched_setaffinity)")
    return cpus


def cpu_setting(value: str | None) -> str | None:
    """A service's `*_CPUS` setting, validated where the service runs: empty means unset."""
    if value:
        usable_cpus(value)  # CpuSpecError, a ValueError, becomes the settings' validation error
    return value or None


def pin_process(spec: str) -> set[int]:
    """Run every thread of this process, and those it starts later, on the CPUs of `spec`."""
    cpus = usable_cpus(spec)
    # Affinity is per thread; threads that libraries started at import keep theirs unless set too.
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread has ended meanwhile
            os.sched_setaffinity(int(task), cpus)
    os.sched_setaffinity(0, cpus)
    return cpus


def split_for_services() -> tuple[str, str] | None:
    """(encoder CPUs, gateway CPUs): the usable CPUs in two halves, or None with fewer than two."""
    cpus = sorted(available_cpus())
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))
