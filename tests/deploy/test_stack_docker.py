"""Opt-in: build the images, bring the compose stack up on a real Docker engine, search it.

Runs only with CLIPSEARCH_DOCKER_TESTS=1, the docker SDK installed, an engine that
answers and the `docker compose` plugin; otherwise it skips and says which is missing.
It serves the tiny test checkpoint (bind-mounted as CHECKPOINTS, no training) and
indexes the local MNIST files (bind-mounted as MNIST), so it needs no network at run
time beyond what the image build itself downloads.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.stack import free_port
from tests.deploy.deployfiles import COMPOSE_FILE, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

OPT_IN = "CLIPSEARCH_DOCKER_TESTS"
INDEX_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 180.0


@pytest.fixture
def docker_client() -> Any:
    """The engine's client; skips (before any other setup) when the stack cannot run here."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"builds and runs the compose stack; opt in with {OPT_IN}=1")
    docker = pytest.importorskip("docker", reason="needs the docker SDK: pip install docker==7.1.0")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc})")
    if shutil.which("docker") is None:
        pytest.skip("needs the docker CLI with the compose plugin")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"needs the docker compose plugin: {probe.stderr.strip()}")
    return client


@dataclass
class Stack:
    project: str
    env_file: Path
    gateway_url: str
    api_key: str
    client: Any

    def compose(self, *args: str, timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        command += ["-f", str(COMPOSE_FILE), *args]
        return subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def container(self, service: str) -> Any:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
        found = self.client.containers.list(all=True, filters={"label": labels})
        assert found, f"no container for {service}"
        return found[0]


@pytest.fixture
def stack(docker_client: Any, tmp_path: Path, tiny_checkpoint: Path, mnist_dir: Path) -> Iterator[Stack]:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoint, checkpoints / "mnist-compact-distilled")
    for path in [checkpoints, *checkpoints.rglob("*")]:  # readable by the image's non-root user
        path.chmod(0o755 if path.is_dir() else 0o644)
    gateway_port = free_port()
    settings = {
        "COMPOSE_PROFILES": "",
        "GATEWAY_API_KEY": secrets.token_hex(16),
        "ENCODER_API_KEY": secrets.token_hex(16),
        "QDRANT_API_KEY": secrets.token_hex(16),
        "HF_HUB_OFFLINE": "1",
        "CHECKPOINTS": str(checkpoints),
        "MNIST": str(mnist_dir.resolve()),
        "GATEWAY_PUBLISHED_PORT": str(gateway_port),
        "GATEWAY_GRPC_PUBLISHED_PORT": str(free_port()),
        "QDRANT_PUBLISHED_PORT": str(free_port()),
        "QDRANT_GRPC_PUBLISHED_PORT": str(free_port()),
    }
    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    stack = Stack(
        project=f"clipsearch-test-{secrets.token_hex(4)}",
        env_file=env_file,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        api_key=settings["GATEWAY_API_KEY"],
        client=docker_client,
    )
    try:
        up = stack.compose("up", "--detach", "--build")
        assert up.returncode == 0, f"docker compose up failed:\n{up.stderr[-4000:]}"
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", timeout_s=120)
        print(logs.stdout[-20000:])
        stack.compose("down", "--volumes", "--remove-orphans", timeout_s=300)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/readyz", timeout=5)
            if reply.status_code == 200:
                return
            last = reply.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(2)
    pytest.fail(f"gateway not ready after {READY_TIMEOUT_S:.0f} s: {last}")


def test_compose_stack_answers_a_text_query(stack: Stack) -> None:
    indexer = stack.container("indexer")
    result = indexer.wait(timeout=INDEX_TIMEOUT_S)
    assert result["StatusCode"] == 0, indexer.logs(tail=80).decode(errors="replace")
    assert stack.container("encoder").attrs["State"]["Health"]["Status"] == "healthy"
    _wait_ready(stack.gateway_url)

    body = {"query": "a handwritten seven", "k": 5}
    refused = httpx.post(f"{stack.gateway_url}/api/v1/search/text", json=body, timeout=30)
    assert refused.status_code == 401, "the gateway must require its API key"
    reply = httpx.post(
        f"{stack.gateway_url}/api/v1/search/text", json=body, headers={"x-api-key": stack.api_key}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    hits = reply.json()["hits"]
    assert len(hits) == 5
    assert all("label" in hit["payload"] for hit in hits)
    media = httpx.get(f"{stack.gateway_url}{hits[0]['image_url']}", timeout=30)
    assert media.status_code == 200
    assert media.content.startswith(b"\x89PNG")
