"""`python -m scripts.demo` as a user runs it: a tiny model, a few hundred MNIST images, SIGTERM."""

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
        _read_until(process, "[demo] ready:", deadline_s=240)
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


def test_demo_distils_a_trained_compact_model_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clipsearch import demo
    from training.models import build_compact

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("CHECKPOINT", raising=False)
    settings = demo.DemoSettings(distill_steps=2)
    build_compact("tiny-convnext", seed=0).save(tmp_path / demo.TRAINED_CHECKPOINT)

    served = demo.ensure_checkpoint(settings, tmp_path)
    assert served == str(demo.DEFAULT_CHECKPOINT)
    config = json.loads((tmp_path / served / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == int(demo.DISTILLED_TEXT_LAYERS)
    assert demo.ensure_checkpoint(settings, tmp_path) == served  # the second run reuses it
    assert "already trained" in capsys.readouterr().out.splitlines()[-1]
