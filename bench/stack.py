"""The real services on loopback for bench scripts: encoder, MNIST indexing, gateway.

Each service runs as `python -m services.<name>` in its own process (clipsearch.processes),
configured through its environment variables, exactly as a deployment starts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from clipsearch.processes import Service, free_port, run, start

__all__ = ["free_port"]  # the tests and benches have long imported it from here

COLLECTION = "mnist"
# The demo's served model (clipsearch/demo.py): the compact model with its text tower distilled.
TRAINED = Path("var/checkpoints/mnist-compact-distilled")


def trained_or_random_checkpoint(workdir: Path, trained: Path = TRAINED) -> tuple[str, str]:
    """The trained demo checkpoint, else the demo architecture with random weights saved in
    `workdir`: (path, what it is)."""
    if (trained / "model.safetensors").is_file():
        return str(trained), "trained compact model"
    from training.models import build_compact

    target = workdir / "random-compact"
    build_compact("mnist-convnext", seed=0).save(target)
    return str(target), "compact model with random weights (no trained checkpoint found)"


def start_encoder(
    checkpoint: str, port: int, torch_threads: int, log: Path, cpus: str | None = None
) -> Service:
    return start(
        "services.encoder",
        env={
            "ENCODER_CHECKPOINT": checkpoint,
            "ENCODER_HOST": "127.0.0.1",
            "ENCODER_PORT": str(port),
            "ENCODER_METRICS_PORT": "0",
            "ENCODER_TORCH_THREADS": str(torch_threads),
            **({"ENCODER_CPUS": cpus} if cpus else {}),
        },
        log=log,
    )


async def wait_encoder(encoder: Service, target: str) -> None:
    await asyncio.to_thread(encoder.wait_grpc_serving, target)


async def index_mnist(
    encoder_target: str, store_path: Path, media_dir: Path, mnist_dir: str, limit: int | None
) -> str:
    """Index the MNIST test split with the real indexer job; returns its summary line."""
    indexed = await asyncio.to_thread(
        run,
        "services.indexer",
        "--no-progress",
        *(["--limit", str(limit)] if limit else []),
        env={
            "INDEXER_ENCODER": encoder_target,
            "INDEXER_STORE_PATH": str(store_path),
            "INDEXER_MEDIA_DIR": str(media_dir),
            "INDEXER_COLLECTION": COLLECTION,
            "INDEXER_SOURCE": "mnist",
            "INDEXER_MNIST_DIR": mnist_dir,
            "INDEXER_MNIST_SPLIT": "test",
        },
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
) -> Service:
    return start(
        "services.gateway",
        env={
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
        log=log,
    )


async def wait_gateway(gateway: Service, http_port: int) -> None:
    await asyncio.to_thread(gateway.wait_http_ready, f"http://127.0.0.1:{http_port}/readyz")
