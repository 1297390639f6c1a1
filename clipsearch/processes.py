"""Services as child processes, for the tests, the benches and the demo.

`start` runs `python -m <module>` with extra environment variables, its output going to
a log file (an unread pipe would fill up and stall it) or, without one, to ours;
`Service.wait_until` waits for health (`grpc_serving`, `http_ready`) and fails with the
log's tail when the process exits or time runs out; `Service.stop` sends SIGTERM, then
SIGKILL to what does not stop in time. `run` runs a job (the indexer, training) to the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 3000


class ServiceError(RuntimeError):
    """A service exited, or did not become ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def environment(env: Mapping[str, str] | None, inherit: bool = True) -> dict[str, str]:
    return {**(os.environ if inherit else {}), **(env or {})}


def grpc_serving(target: str, service: str = "", timeout_s: float = 1.0) -> bool:
    """True when the gRPC health service at `target` says `service` ("" for the server) is SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET `url` (a readiness probe such as .../readyz) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by a process (every thread), or by this one (Linux
    /proc). On a shared machine wall time depends on other jobs, CPU time much less."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServiceError(f"no VmRSS for process {pid}")


def poll_until(
    ready: Callable[[], bool], check: Callable[[], None], timeout_s: float, interval_s: float = 0.2
) -> bool:
    """Poll `ready` until it is true (True) or `timeout_s` has passed (False); `check` runs between
    polls and raises to give up early (a process has exited)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        check()
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


class Service:
    """One child process started by `start`."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self, last_chars: int | None = None) -> str:
        """What it wrote to its log (the last `last_chars` characters); "" without a log file."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace")
        return text if last_chars is None else text[-last_chars:]

    def failure(self, problem: str) -> ServiceError:
        tail = self.output(LOG_TAIL_CHARS)
        return ServiceError(f"{self.name} {problem}" + (f"; its log ends:\n{tail}" if tail else ""))

    def check_running(self) -> None:
        if not self.running:
            raise self.failure(f"exited with code {self.returncode}")

    def wait_until(
        self, ready: Callable[[], bool], timeout_s: float = START_TIMEOUT_S, interval_s: float = 0.2
    ) -> Service:
        """Poll `ready` until it is true; ServiceError if the process exits or time runs out."""
        if not poll_until(ready, self.check_running, timeout_s, interval_s):
            raise self.failure(f"was not ready after {timeout_s:.0f} s")
        return self

    def wait_grpc_serving(
        self, target: str, service: str = "", timeout_s: float = START_TIMEOUT_S
    ) -> Service:
        return self.wait_until(lambda: grpc_serving(target, service), timeout_s)

    def wait_http_ready(self, url: str, timeout_s: float = START_TIMEOUT_S) -> Service:
        return self.wait_until(lambda: http_ready(url), timeout_s)

    # Popen's names, so that tests written against a Popen read the same.
    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it has not stopped within `timeout_s`; returns the exit code."""
        self.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        self.send_signal(signal.SIGKILL)
        return self.process.wait()

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    module: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    name: str | None = None,
    cwd: Path | str | None = None,
    inherit_env: bool = True,
) -> Service:
    """`python -m module *args` with `env` added to ours; output appended to `log` (else ours)."""
    command = python_command(module, *args)
    if log is None:
        process = subprocess.Popen(command, env=environment(env, inherit_env), cwd=cwd)
    else:
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command, env=environment(env, inherit_env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
            )
    return Service(name or module.rsplit(".", 1)[-1], process, log)


def run(
    module: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    capture: bool = True,
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m module *args` to the end; with `capture`, its stdout and stderr come back as text."""
    return subprocess.run(
        python_command(module, *args),
        env=environment(env),
        cwd=cwd,
        capture_output=capture,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class ServiceGroup:
    """Services started together and stopped together, last started first; `say` hears what is done."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.services: list[Service] = []
        self._say = say or (lambda message: None)

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def check_running(self) -> None:
        for service in self.services:
            service.check_running()

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every one still running, then wait for each, killing what does not stop in time."""
        for service in reversed(self.services):
            if service.running:
                self._say(f"stopping {service.name}")
                service.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._say(f"{service.name} did not stop in time; killing it")
                service.kill()
        self.services.clear()

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
