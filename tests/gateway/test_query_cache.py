"""The gateway's text-query embedding cache: LRU order, per-model keys, and off when sized 0."""

from __future__ import annotations

import numpy as np
import pytest

from services.gateway.query_cache import QueryCache


def _vector(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def test_least_recently_used_entry_goes_first() -> None:
    cache = QueryCache(max_entries=2)
    cache.put("model-a", "one", _vector(1))
    cache.put("model-a", "two", _vector(2))
    assert cache.get("model-a", "one") is not None  # "one" is now the most recent
    cache.put("model-a", "three", _vector(3))
    assert len(cache) == 2
    assert cache.get("model-a", "two") is None
    np.testing.assert_array_equal(cache.get("model-a", "one"), _vector(1))  # type: ignore[arg-type]
    np.testing.assert_array_equal(cache.get("model-a", "three"), _vector(3))  # type: ignore[arg-type]


def test_another_model_never_gets_these_vectors() -> None:
    cache = QueryCache(max_entries=8)
    cache.put("model-a", "seven", _vector(7))
    assert cache.get("model-b", "seven") is None


def test_size_zero_keeps_nothing() -> None:
    cache = QueryCache(max_entries=0)
    cache.put("model-a", "seven", _vector(7))
    assert len(cache) == 0
    assert cache.get("model-a", "seven") is None


def test_cached_vectors_cannot_be_changed_by_a_caller() -> None:
    cache = QueryCache(max_entries=8)
    original = _vector(7)
    cache.put("model-a", "seven", original)
    original[:] = 0  # the caller's array is not the cached one
    found = cache.get("model-a", "seven")
    assert found is not None
    np.testing.assert_array_equal(found, _vector(7))
    with pytest.raises(ValueError, match="read-only"):
        found[0] = 1.0
