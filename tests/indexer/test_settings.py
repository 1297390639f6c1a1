from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.bootstrap import load_settings
from services.indexer.__main__ import main
from services.indexer.settings import IndexerSettings


def test_plain_mnist_dir_is_a_fallback_for_indexer_mnist_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INDEXER_MNIST_DIR", raising=False)
    monkeypatch.setenv("MNIST_DIR", "/data/mnist")
    assert IndexerSettings().mnist_dir == Path("/data/mnist")
    monkeypatch.setenv("INDEXER_MNIST_DIR", "/data/indexer-mnist")
    assert IndexerSettings().mnist_dir == Path("/data/indexer-mnist")


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXER_BATCH_SIZE", "32")
    monkeypatch.setenv("INDEXER_MODE", "incremental")
    settings = load_settings(IndexerSettings, ["--batch-size", "128", "--no-fail-on-bad-items"])
    assert (settings.batch_size, settings.mode, settings.fail_on_bad_items) == (128, "incremental", False)


def test_every_flag_spelling_the_scripts_and_tests_use_is_kept(tmp_path: Path) -> None:
    # The flags of the hand-written parser this replaced, as scripts, benches and tests spell them.
    settings = load_settings(
        IndexerSettings,
        [
            "--encoder", "encoder:50051",
            "--qdrant-url", "http://qdrant:6333",
            "--store-path", str(tmp_path / "qdrant"),
            "--collection", "digits",
            "--media-dir", str(tmp_path / "media"),
            "--source", "csv",
            "--mnist-dir", str(tmp_path / "mnist"),
            "--mnist-split", "both",
            "--mnist-download",
            "--folder", str(tmp_path / "folder"),
            "--csv", str(tmp_path / "pairs.csv"),
            "--limit", "300",
            "--mode", "incremental",
            "--keep-versions", "3",
            "--batch-size", "16",
            "--concurrency", "2",
            "--deadline-s", "2.5",
            "--retries", "0",
            "--fail-on-bad-items",
            "--no-progress",
            "--shard-count", "4",
            "--shard-index", "3",
        ],
    )  # fmt: skip
    assert settings.model_dump(exclude={"encoder_api_key", "qdrant_api_key"}) == {
        **IndexerSettings().model_dump(exclude={"encoder_api_key", "qdrant_api_key"}),
        "encoder": "encoder:50051",
        "qdrant_url": "http://qdrant:6333",
        "store_path": tmp_path / "qdrant",
        "collection": "digits",
        "media_dir": tmp_path / "media",
        "source": "csv",
        "mnist_dir": tmp_path / "mnist",
        "mnist_split": "both",
        "mnist_download": True,
        "folder": tmp_path / "folder",
        "csv": tmp_path / "pairs.csv",
        "limit": 300,
        "mode": "incremental",
        "keep_versions": 3,
        "batch_size": 16,
        "concurrency": 2,
        "deadline_s": 2.5,
        "retries": 0,
        "fail_on_bad_items": True,
        "progress": False,
        "shard_count": 4,
        "shard_index": 3,
    }
    negated = load_settings(IndexerSettings, ["--no-mnist-download", "--no-fail-on-bad-items", "--progress"])
    assert (negated.mnist_download, negated.fail_on_bad_items, negated.progress) == (False, False, True)


def test_a_bad_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--batch-sise", "3"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --batch-sise 3" in err
    assert "Traceback" not in err


def test_a_bad_value_names_the_flag_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INDEXER_CONCURRENCY", "0")
    assert main(["--mode", "sometimes"]) == 2
    err = capsys.readouterr().err
    assert "mode (--mode, INDEXER_MODE): Input should be 'full' or 'incremental'" in err
    assert (
        "concurrency (--concurrency, INDEXER_CONCURRENCY): Input should be greater than or equal to 1" in err
    )


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # As compose files and .env templates leave them.
    for name in ("INDEXER_QDRANT_URL", "INDEXER_ENCODER_API_KEY", "INDEXER_LIMIT", "INDEXER_BATCH_SIZE"):
        monkeypatch.setenv(name, "")
    settings = IndexerSettings()
    assert (settings.qdrant_url, settings.encoder_api_key, settings.limit, settings.batch_size) == (
        None,
        None,
        None,
        64,
    )
