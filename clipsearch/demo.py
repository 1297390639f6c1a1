"""`clipsearch demo` (`python -m scripts.demo`, `make demo`): MNIST search on this machine, end to end.

Non-interactive and repeatable; each step is skipped when its result exists:

1. MNIST: $MNIST_DIR, else var/data/mnist (downloaded and checksum-verified).
2. Model: $CHECKPOINT, else var/checkpoints/mnist-compact-distilled: the compact
   model var/checkpoints/mnist-compact (trained here if absent; $DEMO_TRAIN_MINUTES
   caps the training time, default 20) with its text tower distilled from 6 layers
   to 2 (`python -m training distill-text`; $DEMO_DISTILL_STEPS, default 500), which
   makes each text query 2.4x cheaper to embed.
3. Encoder service (`python -m services.encoder`), waited for until SERVING.
4. Indexer (`python -m services.indexer`) on the MNIST test set into the embedded
   store var/qdrant; it reuses a complete index built with the same model.
5. Gateway (`python -m services.gateway`), waited for until ready; prints the URL.

Every setting (ports, host, limits) is in `--help`, with its environment variable.
Paths are relative to the working directory (var/, and training/configs when it trains).

Ctrl-C or SIGTERM stops every process started here. The embedded store admits
one process at a time, so the indexer finishes before the gateway opens it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clipsearch.bootstrap import ServiceSettings, run_service
from clipsearch.datasets import DatasetError, load_mnist
from clipsearch.encoder_client import EncoderClient
from clipsearch.processes import ServiceError, ServiceGroup, grpc_serving, http_ready, poll_until, run, start
from clipsearch.store import open_store

VAR = Path("var")
DEFAULT_MNIST_DIR = VAR / "data" / "mnist"
TRAINED_CHECKPOINT = VAR / "checkpoints" / "mnist-compact"
DEFAULT_CHECKPOINT = VAR / "checkpoints" / "mnist-compact-distilled"  # what the demo serves
DISTILLED_TEXT_LAYERS = "2"  # of MiniLM's 6: the measured trade (training/distill.py, README)
TRAIN_CONFIG = Path("training") / "configs" / "mnist-compact.yaml"  # the measured recipe
STORE_PATH = VAR / "qdrant"
MEDIA_DIR = VAR / "media"
COLLECTION = "mnist"
STARTUP_TIMEOUT_S = 300.0


class DemoSettings(ServiceSettings):
    """MNIST search on this machine, end to end: train (once), index, serve on http://localhost:8080."""

    model_config = SettingsConfigDict(env_prefix="DEMO_")
    env_fallbacks: ClassVar[dict[str, str]] = {"mnist_dir": "MNIST_DIR", "checkpoint": "CHECKPOINT"}

    mnist_dir: Path | None = None
    """MNIST idx files; unset: $MNIST_DIR, else var/data/mnist, downloaded and checksum-verified."""
    checkpoint: str | None = None
    """The model to serve; unset: $CHECKPOINT, else var/checkpoints/mnist-compact-distilled, trained
    here if absent."""
    encoder_port: int = Field(default=50051, ge=1, le=65535)
    http_port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(default=50052, ge=1, le=65535)
    host: str = "127.0.0.1"
    """Where the gateway listens (0.0.0.0: every interface)."""
    train_minutes: float = Field(default=20.0, gt=0)
    """At most this long training the compact model, when there is none yet."""
    distill_steps: int = Field(default=500, ge=1)
    """Steps distilling its text tower to 2 layers."""
    index_limit: int | None = Field(default=None, ge=1)
    """Index only the first N test images (smoke runs); unset: all 10,000."""


class DemoError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_step(name: str, module: str, env: Mapping[str, str], *args: str) -> None:
    """Run a job to completion; a failure ends the demo with its exit code."""
    say(f"{name}: python -m {module} {' '.join(args)}".rstrip())
    completed = run(module, *args, env=env, capture=False)
    if completed.returncode != 0:
        raise DemoError(f"{name} failed with exit code {completed.returncode}")


def ensure_mnist(settings: DemoSettings) -> Path:
    directory = settings.mnist_dir or DEFAULT_MNIST_DIR
    try:
        split = load_mnist(directory, "test", download=settings.mnist_dir is None)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    say(f"MNIST: {len(split.labels)} test images in {directory}")
    return directory


def is_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()
    )


def ensure_checkpoint(settings: DemoSettings, mnist_dir: Path) -> str:
    if settings.checkpoint:
        say(f"model: {settings.checkpoint} (CHECKPOINT)")
        return settings.checkpoint
    if is_checkpoint(DEFAULT_CHECKPOINT):
        say(f"model: {DEFAULT_CHECKPOINT} (already trained)")
        return str(DEFAULT_CHECKPOINT)
    if is_checkpoint(TRAINED_CHECKPOINT):
        say(f"compact model: {TRAINED_CHECKPOINT} (already trained)")
    else:
        say(
            f"no checkpoint at {TRAINED_CHECKPOINT}: training the compact MNIST model "
            f"(at most {settings.train_minutes:g} min)"
        )
        run_step(
            "training",
            "training",
            {},
            "train",
            "--config",
            str(TRAIN_CONFIG),
            "--mnist-dir",
            str(mnist_dir),
            "--output",
            str(TRAINED_CHECKPOINT),
            "--max-minutes",
            f"{settings.train_minutes:g}",
            "--resume",
        )
        if not is_checkpoint(TRAINED_CHECKPOINT):
            raise DemoError(f"training finished but wrote no checkpoint to {TRAINED_CHECKPOINT}")
    run_step(
        "text tower distillation (a few minutes, once)",
        "training",
        {},
        "distill-text",
        str(TRAINED_CHECKPOINT),
        "--output",
        str(DEFAULT_CHECKPOINT),
        "--layers",
        DISTILLED_TEXT_LAYERS,
        "--steps",
        str(settings.distill_steps),
    )
    if not is_checkpoint(DEFAULT_CHECKPOINT):
        raise DemoError(f"distillation finished but wrote no checkpoint to {DEFAULT_CHECKPOINT}")
    return str(DEFAULT_CHECKPOINT)


async def _encoder_fingerprint(target: str) -> str:
    async with EncoderClient(target) as client:
        return (await client.model_info()).fingerprint


def index_mode(encoder_target: str) -> str:
    """ "incremental" (adds only what is missing) when the live index was built with the encoder's
    model, else "full" (a new version; a different model's vectors cannot be mixed in)."""
    fingerprint = asyncio.run(_encoder_fingerprint(encoder_target))
    store = open_store(None, STORE_PATH)  # closed before the gateway opens it: one process at a time
    try:
        live = store.collection_info(COLLECTION)
    finally:
        store.close()
    if live is not None and live.complete and live.fingerprint == fingerprint:
        say(f"index: {live.count} items already built with this model; checking for missing ones")
        return "incremental"
    return "full"


def start_service(services: ServiceGroup, name: str, module: str, env: Mapping[str, str]) -> None:
    say(f"starting {name}: python -m {module}")
    services.add(start(module, env=env, name=name))  # its output goes to ours


def wait_until(description: str, ready: Callable[[], bool], services: ServiceGroup) -> None:
    if not poll_until(ready, services.check_running, STARTUP_TIMEOUT_S, interval_s=0.5):
        raise DemoError(f"{description} did not become ready in {STARTUP_TIMEOUT_S:.0f} s")


def demo(settings: DemoSettings) -> int:
    services = ServiceGroup(say)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only the first signal interrupts: a second one (Ctrl-C pressed twice, or a supervisor and
        # its timeout both signalling) would otherwise break into the stopping itself, with a
        # traceback and children left running. stop_all kills what does not stop in time.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        mnist_dir = ensure_mnist(settings)
        checkpoint = ensure_checkpoint(settings, mnist_dir)
        encoder_target = f"127.0.0.1:{settings.encoder_port}"
        start_service(
            services,
            "encoder",
            "services.encoder",
            {
                "ENCODER_CHECKPOINT": checkpoint,
                "ENCODER_HOST": "127.0.0.1",
                "ENCODER_PORT": str(settings.encoder_port),
                "ENCODER_METRICS_PORT": "0",
            },
        )
        wait_until("the encoder", lambda: grpc_serving(encoder_target), services)
        say(f"encoder serving on {encoder_target}")
        run_step(
            "indexing the MNIST test set",
            "services.indexer",
            {
                "INDEXER_ENCODER": encoder_target,
                "INDEXER_STORE_PATH": str(STORE_PATH),
                "INDEXER_MEDIA_DIR": str(MEDIA_DIR),
                "INDEXER_COLLECTION": COLLECTION,
                "INDEXER_SOURCE": "mnist",
                "INDEXER_MNIST_DIR": str(mnist_dir),
                "INDEXER_MNIST_SPLIT": "test",
                "INDEXER_MODE": index_mode(encoder_target),
            },
            *(["--limit", str(settings.index_limit)] if settings.index_limit else []),
        )
        start_service(
            services,
            "gateway",
            "services.gateway",
            {
                "GATEWAY_ENCODER": encoder_target,
                "GATEWAY_STORE_PATH": str(STORE_PATH),
                "GATEWAY_MEDIA_DIR": str(MEDIA_DIR),
                "GATEWAY_COLLECTION": COLLECTION,
                "GATEWAY_HOST": settings.host,
                "GATEWAY_HTTP_PORT": str(settings.http_port),
                "GATEWAY_GRPC_PORT": str(settings.grpc_port),
            },
        )
        host, port = settings.host, settings.http_port
        base = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
        wait_until("the gateway", lambda: http_ready(f"http://127.0.0.1:{port}/readyz"), services)
        say(
            f"ready: open {base}/  (API docs {base}/docs, gRPC on port {settings.grpc_port}); "
            "Ctrl-C stops everything"
        )
        while True:
            services.check_running()
            time.sleep(1.0)
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except (DemoError, ServiceError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        services.stop_all()


def main(argv: Sequence[str] | None = None, prog: str = "clipsearch demo") -> int:
    return run_service("demo", DemoSettings, demo, argv=argv, prog=prog)
