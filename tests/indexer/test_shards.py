"""Several indexer workers share one full index by shards of the item id; a final run publishes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from clipsearch.store import open_store
from services.indexer.job import IndexerError, run_index
from services.indexer.settings import IndexerSettings
from services.indexer.sources import in_shard

MakeSettings = Callable[..., IndexerSettings]


def test_every_id_falls_in_exactly_one_shard() -> None:
    ids = ["5b7e9f0a-1c2d-5e3f-8a9b-0c1d2e3f4a5b", "00000000-0000-5000-8000-000000000003"]
    for point_id in ids:
        assert sum(in_shard(point_id, 3, index) for index in range(3)) == 1
        assert in_shard(point_id, 1, 0)


def test_shard_index_must_be_below_the_count() -> None:
    with pytest.raises(ValidationError, match="shard_index"):
        IndexerSettings(shard_count=2, shard_index=2)


async def test_shards_fill_one_version_and_a_final_run_publishes_it(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    first = await run_index(make_settings(shard_count=2, shard_index=0))
    second = await run_index(make_settings(shard_count=2, shard_index=1))
    assert first.collection == second.collection  # both shards wrote into the same version
    assert not first.published
    assert not second.published
    assert first.total + second.total == 40
    assert first.indexed == first.total
    assert second.indexed == second.total
    assert second.count == 40
    assert "not published" in second.summary()
    store = open_store(None, make_settings().store_path)
    try:
        assert store.collection_info("digits") is None  # readers see nothing half-built
    finally:
        store.close()

    final = await run_index(make_settings())
    assert final.published
    assert final.collection == first.collection
    assert (final.already_present, final.indexed, final.count) == (40, 0, 40)


async def test_a_later_shard_waits_for_shard_zero_then_gives_up(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    with pytest.raises(IndexerError, match="start shard 0 first"):
        await run_index(make_settings(shard_count=2, shard_index=1, shard_wait_s=1.5))
