"""The process harness (clipsearch.processes) the tests, the benches and the demo share."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from clipsearch.processes import (
    ServiceError,
    ServiceGroup,
    free_port,
    grpc_serving,
    http_ready,
    run,
    start,
)

# Modules written into tmp_path and started with it as the working directory (`python -m` finds them there).
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(600)
"""
FAILING = """
import sys
print("cannot start: the port is taken", file=sys.stderr, flush=True)
sys.exit(3)
"""

REPORT = """
import os, sys
if "HARNESS_PROBE" not in os.environ:
    sys.exit("no HARNESS_PROBE in the environment")
print(os.environ["HARNESS_PROBE"], *sys.argv[1:])
"""


def _module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(source)
    return name


def test_a_service_is_started_waited_for_measured_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "http.log"
    url = f"http://127.0.0.1:{port}/"
    with start("http.server", "--bind", "127.0.0.1", str(port), log=log, cwd=tmp_path) as server:
        server.wait_http_ready(url, timeout_s=60)
        assert http_ready(url)
        assert server.running
        assert server.rss_kib() > 1000
        assert server.name == "server"
    assert not server.running
    assert server.returncode == -signal.SIGTERM
    assert "GET / HTTP" in server.output()  # its log, stdout and stderr together
    assert not http_ready(url)


def test_a_service_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    module = _module(tmp_path, "stubborn", STUBBORN)
    service = start(module, log=tmp_path / "stubborn.log", cwd=tmp_path)
    service.wait_until(lambda: "ignoring SIGTERM" in service.output(), timeout_s=60)
    assert service.stop(timeout_s=0.5) == -signal.SIGKILL


def test_a_service_that_exits_while_waited_for_fails_with_its_log(tmp_path: Path) -> None:
    module = _module(tmp_path, "failing", FAILING)
    service = start(module, log=tmp_path / "failing.log", cwd=tmp_path)
    with pytest.raises(ServiceError, match="failing exited with code 3") as failure:
        service.wait_until(lambda: False, timeout_s=60)
    assert "cannot start: the port is taken" in str(failure.value)


def test_a_service_that_never_gets_ready_fails_after_the_timeout(tmp_path: Path) -> None:
    module = _module(tmp_path, "stubborn", STUBBORN)
    service = start(module, log=tmp_path / "stubborn.log", cwd=tmp_path)
    try:
        with pytest.raises(ServiceError, match="was not ready after 1 s"):
            service.wait_until(lambda: False, timeout_s=1.0, interval_s=0.05)
    finally:
        service.kill()


def test_a_group_stops_the_last_started_first_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    module = _module(tmp_path, "stubborn", STUBBORN)
    with ServiceGroup(said.append) as group:
        first = group.add(start(module, log=tmp_path / "a.log", cwd=tmp_path, name="first"))
        second = group.add(
            start(
                "http.server", "--bind", "127.0.0.1", str(free_port()), log=tmp_path / "b.log", name="second"
            )
        )
        first.wait_until(lambda: "ignoring SIGTERM" in first.output(), timeout_s=60)
        group.check_running()
        group.stop_all(timeout_s=0.5)
    assert said == ["stopping second", "stopping first", "first did not stop in time; killing it"]
    assert (first.returncode, second.returncode) == (-signal.SIGKILL, -signal.SIGTERM)


def test_a_job_runs_to_the_end_with_its_environment_and_output(tmp_path: Path) -> None:
    module = _module(tmp_path, "report", REPORT)
    done = run(module, "--twice", env={"HARNESS_PROBE": "42"}, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "42 --twice\n", "")
    failed = run(module, cwd=tmp_path)
    assert failed.returncode == 1
    assert "HARNESS_PROBE" in failed.stderr


def test_nothing_listening_is_not_serving() -> None:
    assert not grpc_serving(f"127.0.0.1:{free_port()}", timeout_s=0.5)
    assert not http_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout_s=0.5)
