"""`python -m scripts.demo` as a user runs it: tiny models, a few hundred MNIST images, SIGTERM; a
first model served quickly and the final one swapped in live; a second run that reuses everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.stack import free_port
from tests.gateway.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _read_until(process: subprocess.Popen[str], marker: str, deadline_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + deadline_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in the demo's output:\n{''.join(lines[-40:])}")


def test_demo_serves_search_and_stops_everything_on_sigterm_even_twice(
    tmp_path: Path, tiny_checkpoint: Path, mnist_dir: Path
) -> None:
    http_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "CHECKPOINT": str(tiny_checkpoint),
        "MNIST_DIR": str(mnist_dir),
        "DEMO_COLLECTIONS": "mnist",
        "DEMO_INDEX_LIMIT": "300",
        "DEMO_HTTP_PORT": str(http_port),
        "DEMO_GRPC_PORT": str(free_port()),
        "DEMO_ENCODER_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "scripts.demo"],
        cwd=tmp_path,  # var/ (store, media) lands here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _read_until(process, "[demo] ready", deadline_s=240)
        url = f"http://127.0.0.1:{http_port}/api/v1/search/text?q=seven&k=5"
        with urllib.request.urlopen(url, timeout=10) as response:
            hits = json.load(response)["hits"]
        process.send_signal(signal.SIGTERM)
        tail = _read_until(process, "[demo] stopping encoder", deadline_s=30)
        # Again while it waits for its children to stop, as a supervisor and its timeout both
        # would: the second signal must not break into the stopping.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        tail += process.stdout.readlines()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(hits) == 5
    assert all(0 <= hit["payload"]["label"] <= 9 for hit in hits)
    assert any("stopping gateway" in line for line in tail)
    assert not any("Traceback" in line for line in tail), "".join(tail)
    assert (tmp_path / "var" / "media").is_dir()
    with pytest.raises(urllib.error.URLError, match="refused"):  # the gateway is gone with the demo
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2)


# The compact recipe's shape on a tiny model and a few hundred images: seconds, not minutes.
TINY_RECIPE = """
model: tiny-convnext
freeze: lock-text
epochs: 2
batch_size: 32
lr: 0.002
warmup_steps: 2
label_aware: true
patience: 5
seed: 0
data:
  kind: mnist
  limit: 300
  val_fraction: 0.1
"""


def _demo(tmp_path: Path, mnist_dir: Path, http_port: int) -> subprocess.Popen[str]:
    recipe = tmp_path / "tiny-mnist.yaml"
    recipe.write_text(TINY_RECIPE)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MNIST_DIR": str(mnist_dir),
        "DEMO_COLLECTIONS": "mnist",
        "DEMO_MNIST_CONFIG": str(recipe),
        "DEMO_MNIST_QUICK_EPOCHS": "1",
        "DEMO_DISTILL_STEPS": "2",
        "DEMO_INDEX_LIMIT": "200",
        "DEMO_HTTP_PORT": str(http_port),
        "DEMO_GRPC_PORT": str(free_port()),
        "DEMO_ENCODER_PORT": str(free_port()),
    }
    env.pop("CHECKPOINT", None)
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "scripts.demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> list[str]:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stdout is not None
    return process.stdout.readlines()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, object] = json.load(response)
    return answer


def test_demo_serves_a_first_model_then_swaps_in_the_final_one_live_and_reuses_both(
    tmp_path: Path, mnist_dir: Path
) -> None:
    from clipsearch.checkpoint_files import weights_fingerprint

    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}/api/v1"
    process = _demo(tmp_path, mnist_dir, http_port)
    try:
        first = _read_until(process, "[demo] ready", deadline_s=300)
        quick = _get(f"{base}/collections")["collections"]
        served_early = _get(f"{base}/search/text?q=seven&k=5")
        later = _read_until(process, "all models in place", deadline_s=400)
        served_now = weights_fingerprint(tmp_path / "var" / "models" / "mnist")
        deadline = time.monotonic() + 30  # the gateway rereads collection facts every few seconds
        while (final := _get(f"{base}/collections")["collections"])[0]["fingerprint"] != served_now:  # type: ignore[index]
            assert time.monotonic() < deadline, f"the gateway still serves {final}"
            time.sleep(0.5)
        served_late = _get(f"{base}/search/text?q=seven&k=5")
        tail = _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(first + later + tail)
    assert "training a first MNIST model" in output
    assert "training the final MNIST model" in output
    assert "distilling its text tower" in output
    assert "Traceback" not in output, output[-3000:]
    state = json.loads((tmp_path / "var" / "demo.json").read_text())
    assert state["mnist"] == {"stage": "final", "fingerprint": served_now}
    assert len(quick) == len(final) == 1  # type: ignore[arg-type]
    assert len(served_early["hits"]) == len(served_late["hits"]) == 5  # type: ignore[arg-type]
    # The gate decides: the final model's version is live, or the first stays and is served again.
    if "final model in place" in output:
        assert final[0]["fingerprint"] != quick[0]["fingerprint"]  # type: ignore[index]
    else:
        assert "the first one, which stays" in output

    again = _demo(tmp_path, mnist_dir, http_port)
    try:
        reused = _read_until(again, "all models in place", deadline_s=300)
        tail = _stop(again)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    output = "".join(reused + tail)
    assert "(already made)" in output
    assert "training a first" not in output
    assert "training the final" not in output
