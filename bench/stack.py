"""The real services on loopback for bench scripts: encoder, MNIST indexing, gateway.

Each service runs as `python -m services.<name>` in its own process, configured
through its environment variables, exactly as a deployment starts it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx

COLLECTION = "mnist"
# The demo's served model (scripts/demo.py): the compact model with its text tower distilled.
TRAINED = Path("var/checkpoints/mnist-compact-distilled")
READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def trained_or_random_checkpoint(workdir: Path, trained: Path = TRAINED) -> tuple[str, str]:
    """The trained demo checkpoint, else the demo architecture with random weights saved in
    `workdir`: (path, what it is)."""
    if (trained / "model.safetensors").is_file():
        return str(trained), "trained compact model"
    from training.models import build_compact

    target = workdir / "random-compact"
    build_compact("mnist-convnext", seed=0).save(target)
    return str(target), "compact model with random weights (no trained checkpoint found)"


def start(module: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    # Output to a file: an unread pipe would fill up and stall the service.
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", module], env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for(
    check: Callable[[], Awaitable[bool]], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await check():
        if process.poll() is not None:
            output = await asyncio.to_thread(log.read_text, errors="replace")
            raise SystemExit(f"{what} exited ({process.returncode}):\n{output[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not become ready")
        await asyncio.sleep(0.3)


def start_encoder(
    checkpoint: str, port: int, torch_threads: int, log: Path, cpus: str | None = None
) -> subprocess.Popen[bytes]:
    return start(
        "services.encoder",
        {
            "ENCODER_CHECKPOINT": checkpoint,
            "ENCODER_HOST": "127.0.0.1",
            "ENCODER_PORT": str(port),
            "ENCODER_METRICS_PORT": "0",
            "ENCODER_TORCH_THREADS": str(torch_threads),
            **({"ENCODER_CPUS": cpus} if cpus else {}),
        },
        log,
    )


async def index_mnist(
    encoder_target: str, store_path: Path, media_dir: Path, mnist_dir: str, limit: int | None
) -> str:
    """Index the MNIST test split with the real indexer job; returns its summary line."""
    indexed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.indexer",
            "--no-progress",
            *(["--limit", str(limit)] if limit else []),
        ],
        env={
            **os.environ,
            "INDEXER_ENCODER": encoder_target,
            "INDEXER_STORE_PATH": str(store_path),
            "INDEXER_MEDIA_DIR": str(media_dir),
            "INDEXER_COLLECTION": COLLECTION,
            "INDEXER_SOURCE": "mnist",
            "INDEXER_MNIST_DIR": mnist_dir,
            "INDEXER_MNIST_SPLIT": "test",
        },
        check=False,
        capture_output=True,
        text=True,
    )
    if indexed.returncode != 0:
        raise SystemExit(f"indexing failed:\n{indexed.stderr[-2000:]}")
    return indexed.stdout.strip()


def start_gateway(
    encoder_target: str,
    store_path: Path,
    media_dir: Path,
    http_port: int,
    log: Path,
    extra_env: Mapping[str, str] | None = None,
    cpus: str | None = None,
) -> subprocess.Popen[bytes]:
    return start(
        "services.gateway",
        {
            **({"GATEWAY_CPUS": cpus} if cpus else {}),
            "GATEWAY_ENCODER": encoder_target,
            "GATEWAY_STORE_PATH": str(store_path),
            "GATEWAY_MEDIA_DIR": str(media_dir),
            "GATEWAY_COLLECTION": COLLECTION,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_HTTP_PORT": str(http_port),
            "GATEWAY_GRPC_PORT": str(free_port()),
            **(extra_env or {}),
        },
        log,
    )


async def wait_for_gateway(http: httpx.AsyncClient, gateway: subprocess.Popen[bytes], log: Path) -> None:
    async def ready() -> bool:
        try:
            return (await http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(ready, gateway, "gateway", log)
