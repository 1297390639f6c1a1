"""How the tests start services as real processes on loopback (clipsearch.processes): from the
repository, offline, with small settings."""

from __future__ import annotations

import os
from pathlib import Path

from clipsearch import processes
from clipsearch.processes import Service

REPO = Path(__file__).resolve().parents[1]


def python_env(**variables: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **variables}


def start(module: str, env: dict[str, str], log: Path, *args: str) -> Service:
    """`python -m module` from the repository, its stdout and stderr appended to `log`."""
    return processes.start(module, *args, env=env, log=log, cwd=REPO)


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


def gateway_env(
    encoder_port: int, store_path: Path, media_dir: Path, http_port: int, **variables: str
) -> dict[str, str]:
    """A gateway on loopback over the tests' "digits" collection (gRPC on a free port)."""
    return python_env(
        GATEWAY_ENCODER=f"127.0.0.1:{encoder_port}",
        GATEWAY_STORE_PATH=str(store_path),
        GATEWAY_MEDIA_DIR=str(media_dir),
        GATEWAY_COLLECTION="digits",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_HTTP_PORT=str(http_port),
        GATEWAY_GRPC_PORT=str(processes.free_port()),
        **variables,
    )
