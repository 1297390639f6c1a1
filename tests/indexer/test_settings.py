from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.bootstrap import load_settings
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
