"""`python -m services.encoder` as a process: graceful SIGTERM, clear failures on a broken checkpoint
or model list."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from clipsearch.processes import free_port, run
from tests.processes import encoder_env, start


@pytest.mark.slow
def test_sigterm_stops_the_server_gracefully(tiny_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    encoder = start("services.encoder", encoder_env(tiny_checkpoint, port), tmp_path / "encoder.log")
    try:
        encoder.wait_grpc_serving(f"127.0.0.1:{port}", "clipsearch.v1.Encoder", timeout_s=60)
        encoder.send_signal(signal.SIGTERM)
        returncode = encoder.wait(timeout=15)
    finally:
        encoder.kill()
    assert returncode == 0, encoder.output()
    assert "encoder stopped" in encoder.output()


@pytest.mark.slow
def test_missing_weights_exit_non_zero_naming_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    result = run("services.encoder", env=encoder_env(broken, free_port()), timeout_s=60)
    assert result.returncode != 0
    assert "model.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_bad_model_list_is_refused_with_a_message(tiny_checkpoint: Path) -> None:
    env = encoder_env(tiny_checkpoint, free_port(), ENCODER_MODELS=f"a={tiny_checkpoint},a=elsewhere")
    result = run("services.encoder", env=env, timeout_s=60)
    assert result.returncode == 2
    assert "'a' is given twice" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_start_naming_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    models = f"good={tiny_checkpoint},broken={tmp_path / 'nowhere'}"
    env = encoder_env(tiny_checkpoint, free_port(), ENCODER_MODELS=models)
    result = run("services.encoder", env=env, timeout_s=60)
    assert result.returncode == 1
    assert "model 'broken'" in result.stderr
    assert "none served" in result.stderr
    assert "Traceback" not in result.stderr
