"""`python -m scripts.demo` (`make demo`): MNIST search on this machine, end to end.

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

Ports and limits: DEMO_HTTP_PORT (8080), DEMO_GRPC_PORT (50052), DEMO_ENCODER_PORT
(50051), DEMO_HOST (127.0.0.1), DEMO_INDEX_LIMIT (index only the first N images).

Ctrl-C or SIGTERM stops every process started here. The embedded store admits
one process at a time, so the indexer finishes before the gateway opens it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from clipsearch.datasets import DatasetError, load_mnist
from clipsearch.encoder_client import EncoderClient
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
ENCODER_PORT = int(os.environ.get("DEMO_ENCODER_PORT", "50051"))
HTTP_PORT = int(os.environ.get("DEMO_HTTP_PORT", "8080"))
GRPC_PORT = int(os.environ.get("DEMO_GRPC_PORT", "50052"))
HOST = os.environ.get("DEMO_HOST", "127.0.0.1")
TRAIN_MINUTES = os.environ.get("DEMO_TRAIN_MINUTES", "20")
DISTILL_STEPS = os.environ.get("DEMO_DISTILL_STEPS", "500")
# Index only the first N test images (smoke runs); unset: all 10,000.
INDEX_LIMIT = os.environ.get("DEMO_INDEX_LIMIT")
STARTUP_TIMEOUT_S = 300.0


class DemoError(RuntimeError):
    pass


class Processes:
    """The child processes started here, stopped in reverse order on exit."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, module: str, env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
        say(f"starting {name}: python -m {module} {' '.join(args)}".rstrip())
        process = subprocess.Popen([sys.executable, "-m", module, *args], env={**os.environ, **env})
        self.running.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise DemoError(f"{name} exited with code {process.returncode}")

    def stop_all(self) -> None:
        for name, process in reversed(self.running):
            if process.poll() is None:
                say(f"stopping {name}")
                process.terminate()
        for name, process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time; killing it")
                process.kill()
                process.wait()
        self.running.clear()


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_step(name: str, module: str, env: Mapping[str, str], *args: str) -> None:
    """Run a job to completion; a failure ends the demo with its exit code."""
    say(f"{name}: python -m {module} {' '.join(args)}".rstrip())
    completed = subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **env}, check=False)
    if completed.returncode != 0:
        raise DemoError(f"{name} failed with exit code {completed.returncode}")


def ensure_mnist() -> Path:
    configured = os.environ.get("MNIST_DIR")
    directory = Path(configured) if configured else DEFAULT_MNIST_DIR
    try:
        split = load_mnist(directory, "test", download=not configured)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    say(f"MNIST: {len(split.labels)} test images in {directory}")
    return directory


def is_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()
    )


def ensure_checkpoint(mnist_dir: Path) -> str:
    configured = os.environ.get("CHECKPOINT")
    if configured:
        say(f"model: {configured} (CHECKPOINT)")
        return configured
    if is_checkpoint(DEFAULT_CHECKPOINT):
        say(f"model: {DEFAULT_CHECKPOINT} (already trained)")
        return str(DEFAULT_CHECKPOINT)
    if is_checkpoint(TRAINED_CHECKPOINT):
        say(f"compact model: {TRAINED_CHECKPOINT} (already trained)")
    else:
        say(
            f"no checkpoint at {TRAINED_CHECKPOINT}: training the compact MNIST model "
            f"(at most {TRAIN_MINUTES} min)"
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
            TRAIN_MINUTES,
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
        DISTILL_STEPS,
    )
    if not is_checkpoint(DEFAULT_CHECKPOINT):
        raise DemoError(f"distillation finished but wrote no checkpoint to {DEFAULT_CHECKPOINT}")
    return str(DEFAULT_CHECKPOINT)


async def _encoder_serving(target: str) -> bool:
    async with EncoderClient(target, timeout_s=2.0) as client:
        return await client.serving()


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


def wait_until(description: str, ready: Callable[[], bool], processes: Processes) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"{description} did not become ready in {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    processes = Processes()

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
        mnist_dir = ensure_mnist()
        checkpoint = ensure_checkpoint(mnist_dir)
        encoder_target = f"127.0.0.1:{ENCODER_PORT}"
        processes.start(
            "encoder",
            "services.encoder",
            {
                "ENCODER_CHECKPOINT": checkpoint,
                "ENCODER_HOST": "127.0.0.1",
                "ENCODER_PORT": str(ENCODER_PORT),
                "ENCODER_METRICS_PORT": "0",
            },
        )
        wait_until("the encoder", lambda: asyncio.run(_encoder_serving(encoder_target)), processes)
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
            *(["--limit", INDEX_LIMIT] if INDEX_LIMIT else []),
        )
        processes.start(
            "gateway",
            "services.gateway",
            {
                "GATEWAY_ENCODER": encoder_target,
                "GATEWAY_STORE_PATH": str(STORE_PATH),
                "GATEWAY_MEDIA_DIR": str(MEDIA_DIR),
                "GATEWAY_COLLECTION": COLLECTION,
                "GATEWAY_HOST": HOST,
                "GATEWAY_HTTP_PORT": str(HTTP_PORT),
                "GATEWAY_GRPC_PORT": str(GRPC_PORT),
            },
        )
        base = f"http://{'localhost' if HOST in ('127.0.0.1', '0.0.0.0') else HOST}:{HTTP_PORT}"
        wait_until("the gateway", lambda: http_ready(f"http://127.0.0.1:{HTTP_PORT}/readyz"), processes)
        say(f"ready: open {base}/  (API docs {base}/docs, gRPC on port {GRPC_PORT}); Ctrl-C stops everything")
        while True:
            processes.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except DemoError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
