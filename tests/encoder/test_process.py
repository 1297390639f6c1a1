"""`python -m services.encoder` as a process: graceful SIGTERM, clear failure on a broken checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import free_port

REPO = Path(__file__).resolve().parents[2]


def _environment(checkpoint: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "ENCODER_CHECKPOINT": str(checkpoint),
        "ENCODER_HOST": "127.0.0.1",
        "ENCODER_PORT": str(port),
        "ENCODER_METRICS_PORT": "0",
        "ENCODER_SHUTDOWN_GRACE_S": "2",
        "HF_HUB_OFFLINE": "1",
    }


def _wait_serving(port: int, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service="clipsearch.v1.Encoder"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError("encoder did not become SERVING")


@pytest.mark.slow
def test_sigterm_stops_the_server_gracefully(tiny_checkpoint: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.encoder"],
        cwd=REPO,
        env=_environment(tiny_checkpoint, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_serving(port, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "encoder stopped" in stderr


@pytest.mark.slow
def test_missing_weights_exit_non_zero_naming_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "services.encoder"],
        cwd=REPO,
        env=_environment(broken, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "model.safetensors" in result.stderr
    assert "Traceback" not in result.stderr
