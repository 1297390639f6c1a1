"""Services as real processes on loopback: start, wait until serving, measure memory, kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0


def python_env(**variables: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **variables}


def start(module: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m module`, its stdout and stderr going to `log`."""
    handle: IO[bytes] = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
    )


def encoder_env(checkpoint: Path, port: int, **variables: str) -> dict[str, str]:
    return python_env(
        ENCODER_CHECKPOINT=str(checkpoint),
        ENCODER_HOST="127.0.0.1",
        ENCODER_PORT=str(port),
        ENCODER_METRICS_ENABLED="false",
        ENCODER_SHUTDOWN_GRACE_S="1",
        ENCODER_TORCH_THREADS="1",
        **variables,
    )


def wait_encoder_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"encoder exited: {log.read_text()[-2000:]}"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"encoder not serving after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def wait_http_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gateway exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gateway not ready after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
