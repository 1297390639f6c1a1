"""The embedded store's settings by collection size: a large collection is built quantized, in
segments indexed as they fill, and still answers like exact search."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from clipsearch.store import IMAGE_VECTOR, Point, open_store
from clipsearch.store.edge import LARGE_COLLECTION, EdgeStore, EdgeTuning

DIM = 16


def test_small_collections_keep_the_defaults_and_large_ones_get_quantized_segments() -> None:
    assert EdgeTuning.for_size(70_000) == EdgeTuning()
    large = EdgeTuning.for_size(LARGE_COLLECTION)
    assert (large.quantization, large.vectors_memory) == ("int8", "cold")
    assert large.segment_points is not None
    assert large.segment_points < LARGE_COLLECTION


def test_the_expected_size_picks_the_tuning(tmp_path: Path) -> None:
    store = open_store(None, tmp_path / "store", expected_points=2 * LARGE_COLLECTION)
    try:
        assert isinstance(store, EdgeStore)
        assert store.tuning == EdgeTuning.for_size(2 * LARGE_COLLECTION)
    finally:
        store.close()


def test_a_quantized_collection_built_in_segments_answers_like_exact_search(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1200, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # The large-collection settings, with segments small enough that this collection fills several
    # and with a graph (no exact-search shortcut) in each.
    tuning = replace(
        EdgeTuning.for_size(LARGE_COLLECTION),
        segment_points=400,
        full_scan_threshold_kb=1,
        indexing_threshold_kb=1,
    )
    store = EdgeStore(tmp_path / "store", tuning=tuning)
    try:
        name = store.create_version("big", dim=DIM, fingerprint="fp", vector_names=[IMAGE_VECTOR], source="s")
        for start in range(0, len(vectors), 100):  # the indexer's way: batch after batch
            store.upsert(
                name,
                [
                    Point(
                        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"p{i}")),
                        vectors={IMAGE_VECTOR: vectors[i]},
                        payload={"label": i % 10, "index": i},
                    )
                    for i in range(start, start + 100)
                ],
            )
        store.finish_version("big", name, keep=2)
        info = store.collection_info("big")
        assert info is not None
        assert info.count == len(vectors)

        queries = rng.normal(size=(20, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        found = exact = 0
        for query in queries:
            truth = set(np.argsort(-(vectors @ query))[:10].tolist())
            hits = store.search("big", query, k=10)
            found += len(truth & {hit.payload["index"] for hit in hits})
            exact += 10
            filtered = store.search("big", query, k=5, filter={"label": 3})
            assert len(filtered) == 5
            assert all(hit.payload["label"] == 3 for hit in filtered)
        assert found / exact >= 0.9  # recall@10 of the quantized graph search, rescored
    finally:
        store.close()
