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
