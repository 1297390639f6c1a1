"""`python -m services.indexer`: exit codes and messages for users, and resume after SIGKILL."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from clipsearch.processes import run
from clipsearch.store import open_store
from services.indexer.__main__ import main
from tests.indexer.conftest import write_mnist
from tests.processes import REPO, python_env, start


def cli_args(tmp_path: Path, encoder: str, *extra: str) -> list[str]:
    return [
        "--encoder",
        encoder,
        "--store-path",
        str(tmp_path / "qdrant"),
        "--media-dir",
        str(tmp_path / "media"),
        "--collection",
        "digits",
        "--mnist-dir",
        str(tmp_path / "mnist"),
        "--batch-size",
        "8",
        "--no-progress",
        *extra,
    ]


def test_a_run_prints_a_summary(
    tmp_path: Path, mnist_files: Path, encoder_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(tmp_path, encoder_target)) == 0
    out = capsys.readouterr().out
    assert "40 indexed, 0 already present, 0 deleted, 0 errors" in out
    assert "collection holds 40 points" in out


def test_rollback_is_a_flag_that_prints_what_it_did_or_why_not(
    tmp_path: Path, mnist_files: Path, encoder_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(tmp_path, encoder_target, "--rollback")) == 1
    assert "no collection 'digits' to roll back" in capsys.readouterr().err
    assert main(cli_args(tmp_path, encoder_target)) == 0
    assert main(cli_args(tmp_path, encoder_target)) == 0  # the same model again: published, not gated
    capsys.readouterr()
    assert main(cli_args(tmp_path, encoder_target, "--rollback")) == 0
    out = capsys.readouterr().out
    assert "rolled back 'digits' from digits__v" in out
    assert "--rollback again returns to" in out


def test_a_missing_mnist_directory_is_a_clear_error(
    tmp_path: Path, encoder_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(tmp_path, encoder_target)) == 1
    err = capsys.readouterr().err
    assert "MNIST file t10k-images-idx3-ubyte.gz not found" in err
    assert "Traceback" not in err


def test_an_unreachable_encoder_is_a_clear_error(
    tmp_path: Path, mnist_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(tmp_path, "127.0.0.1:1", "--retries", "0", "--deadline-s", "2")) == 1
    err = capsys.readouterr().err
    assert "cannot reach the encoder at 127.0.0.1:1" in err
    assert "Traceback" not in err


def test_a_locked_store_is_a_clear_error(
    tmp_path: Path, mnist_files: Path, encoder_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(tmp_path, encoder_target)) == 0
    holder = open_store(None, tmp_path / "qdrant")
    try:
        assert holder.collection_info("digits") is not None  # holds the live version, as a gateway does
        assert main(cli_args(tmp_path, encoder_target, "--mode", "incremental")) == 1  # writes into it
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert "in use by another process" in err
    assert "Qdrant server URL" in err


def test_bad_settings_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli_args(tmp_path, "x:1", "--batch-size", "0")) == 2
    assert "batch_size" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates(tmp_path: Path, encoder_target: str) -> None:
    write_mnist(tmp_path / "mnist", test=1500, train=0)
    args = cli_args(tmp_path, encoder_target, "--concurrency", "1")
    process = start("services.indexer", python_env(), tmp_path / "indexer.log", *args)
    media = tmp_path / "media"
    deadline = time.monotonic() + 120
    while not (media.is_dir() and len(list(media.glob("*.png"))) >= 40) and process.poll() is None:
        assert time.monotonic() < deadline, "the indexer wrote nothing"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"

    store = open_store(None, tmp_path / "qdrant")
    try:
        assert store.collection_info("digits") is None
        partial = store.versions("digits")[0].count
    finally:
        store.close()
    assert 0 < partial < 1500

    resumed = run("services.indexer", *args, env=python_env(), cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    store = open_store(None, tmp_path / "qdrant")
    try:
        info = store.collection_info("digits")
        assert info is not None
        assert info.count == 1500
        assert len(store.ids(info.name)) == 1500
    finally:
        store.close()
