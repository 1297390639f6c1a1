"""Shared fixtures: tiny real checkpoints saved with save_pretrained, and data locations."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clipsearch.logs import HANDLER_NAME
from training.models import build_compact

if TYPE_CHECKING:
    from services.encoder.server import EncoderServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Encoders started by tests (in process or as processes) export ONNX text towers here,
    not into the user's ~/.cache."""
    directory = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get("ENCODER_ONNX_CACHE_DIR")
    os.environ["ENCODER_ONNX_CACHE_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("ENCODER_ONNX_CACHE_DIR", None)
    else:
        os.environ["ENCODER_ONNX_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The root logger as it was after each test: tests call configure_logging, directly or through
    a service's main, which replaces the handler and the level."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel checkpoint (tokenizer, image processor, sidecar) on disk."""
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-clip"
    build_compact("tiny", seed=0).save(directory)
    return directory


@pytest.fixture(scope="session")
def other_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, other weights: a different fingerprint."""
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-clip-other"
    build_compact("tiny", seed=1).save(directory)
    return directory


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST idx files (MNIST_DIR; CI points it at ../shared/data/mnist)."""
    configured = os.environ.get("MNIST_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "data" / "mnist"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST idx files not found in {path} (set MNIST_DIR)")
    return path


@pytest.fixture(scope="session")
def encoder_target(tiny_checkpoint: Path) -> Iterator[str]:
    """A real encoder gRPC server on a loopback port, serving the tiny checkpoint: "127.0.0.1:PORT"."""
    from services.encoder.server import serve_in_thread
    from services.encoder.settings import EncoderSettings

    settings = EncoderSettings(checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0)
    with serve_in_thread(settings) as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture(scope="session")
def emoji_data_dir() -> Path:
    """The real emoji collection (EMOJI_DIR; CI points it at ../shared/data/emoji)."""
    configured = os.environ.get("EMOJI_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "data" / "emoji"
    if not (path / "emoji.csv").is_file():
        pytest.skip(f"emoji collection not found in {path} (set EMOJI_DIR)")
    return path


# The names the `two_model_encoder` serves its models under.
TWO_MODELS = ("first", "second")


@pytest.fixture(scope="session")
def two_model_encoder(tiny_checkpoint: Path, other_tiny_checkpoint: Path) -> Iterator[EncoderServer]:
    """One encoder on loopback serving two models, "first" (tiny_checkpoint) and "second"
    (other_tiny_checkpoint); its target is f"127.0.0.1:{server.port}"."""
    from services.encoder.server import serve_in_thread
    from services.encoder.settings import EncoderSettings

    settings = EncoderSettings(
        models=f"first={tiny_checkpoint},second={other_tiny_checkpoint}",
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        # Exactly the in-process embedding, so tests can compare vectors with it.
        text_runtime="torch",
        cpu_mode="fp32",
        max_batch_size=16,
        max_wait_ms=50,  # wide enough to batch concurrent calls
    )
    with serve_in_thread(settings) as server:
        yield server


@pytest.fixture(scope="session")
def emoji_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated emoji-layout directory (emoji.csv, images/<style>/<id>.png), without bad rows:
    six concepts in the four styles."""
    from tests.training.conftest import write_emoji_dir

    return write_emoji_dir(tmp_path_factory.mktemp("emoji-layout") / "emoji", bad_row=False)


@dataclass(frozen=True)
class EmojiModels:
    """Two tiny emoji checkpoints for one collection: `better`, trained for a few epochs on the
    generated layout, and `worse`, its random initialisation."""

    better: Path
    worse: Path


@pytest.fixture(scope="session")
def emoji_models(tmp_path_factory: pytest.TempPathFactory, emoji_layout: Path) -> EmojiModels:
    from training.__main__ import main as train_main

    output = tmp_path_factory.mktemp("emoji-models") / "emoji-tiny"
    code = train_main(
        [
            "train", "--model", "tiny-emoji", "--output", str(output), "--emoji-dir", str(emoji_layout),
            "--holdout-fraction", "0", "--epochs", "8", "--batch-size", "6", "--warmup-steps", "2",
            "--val-fraction", "0", "--threads", "1", "--save-init", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return EmojiModels(better=output, worse=output.with_name("emoji-tiny-init"))
