"""The Qdrant store over the embedded (local path) backend: filters, named vectors, versions, alias."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.store import (
    CAPTION_VECTOR,
    IMAGE_VECTOR,
    FilterError,
    Point,
    QdrantStore,
    StoreError,
    StoreUnavailable,
    VectorStore,
    open_store,
    to_qdrant_filter,
    validate_filter,
)

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def make_points(n: int, *, captions: bool = False) -> list[Point]:
    points = []
    for i in range(n):
        vectors = {IMAGE_VECTOR: unit(i)}
        if captions:
            vectors[CAPTION_VECTOR] = unit(1000 + i)
        points.append(
            Point(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"test#{i}")),
                vectors=vectors,
                payload={"label": i % 3, "split": "test" if i % 2 else "train", "index": i},
            )
        )
    return points


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QdrantStore]:
    opened = open_store(None, tmp_path / "qdrant", backend="local")
    assert isinstance(opened, QdrantStore)
    yield opened
    opened.close()


def build(
    store: VectorStore, alias: str, points: list[Point], *, fingerprint: str = "fp1", keep: int = 2
) -> str:
    names = sorted(points[0].vectors)
    name = store.create_version(alias, dim=DIM, fingerprint=fingerprint, vector_names=names, source="src")
    store.upsert(name, points)
    store.finish_version(alias, name, keep=keep)
    return name


def test_search_finds_the_exact_vector_with_cosine_score(store: QdrantStore) -> None:
    points = make_points(20)
    build(store, "digits", points)
    hits = store.search("digits", points[5].vectors[IMAGE_VECTOR], k=3)
    assert hits[0].id == points[5].id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["index"] == 5
    assert len(hits) == 3


def test_filters_by_value_and_by_any_of_a_list(store: QdrantStore) -> None:
    build(store, "digits", make_points(30))
    query = unit(99)
    labels = {h.payload["label"] for h in store.search("digits", query, k=30, filter={"label": 2})}
    assert labels == {2}
    labels = {h.payload["label"] for h in store.search("digits", query, k=30, filter={"label": [0, 2]})}
    assert labels == {0, 2}
    splits = {h.payload["split"] for h in store.search("digits", query, k=30, filter={"split": "test"})}
    assert splits == {"test"}


def test_bad_filters_are_rejected_before_the_store(store: QdrantStore) -> None:
    with pytest.raises(FilterError, match="unknown filter field"):
        to_qdrant_filter({"colour": "red"})
    with pytest.raises(FilterError, match="int"):
        store.search("digits", unit(0), filter={"label": "seven"})


def test_validate_filter_returns_the_normalised_filter_and_leaves_its_input_alone() -> None:
    given = {"label": [1.0, 7], "split": "test", "style": "openmoji-line"}
    checked = validate_filter(given)
    assert checked == {"label": [1, 7], "split": "test", "style": "openmoji-line"}
    assert checked is not None
    assert all(type(v) is int for v in checked["label"])
    assert given["label"] == [1.0, 7]  # a copy: the caller's dict is not changed
    assert validate_filter({"label": -7.0}) == {"label": -7}
    assert validate_filter(None) is None
    assert validate_filter({}) == {}


def test_qdrant_filters_are_built_from_the_normalised_filter() -> None:
    built = to_qdrant_filter({"label": 7.0, "group": ["Objects", "Symbols"]})
    assert built is not None
    conditions = {c.key: c.match for c in built.must}
    assert conditions["label"].value == 7
    assert type(conditions["label"].value) is int
    assert conditions["group"].any == ["Objects", "Symbols"]
    assert to_qdrant_filter({}) is None


def test_offset_pages_through_results(store: QdrantStore) -> None:
    build(store, "digits", make_points(10))
    query = unit(50)
    first = [h.id for h in store.search("digits", query, k=4)]
    second = [h.id for h in store.search("digits", query, k=4, offset=4)]
    assert not set(first) & set(second)
    assert first + second == [h.id for h in store.search("digits", query, k=8)]


def test_caption_vectors_are_searched_by_name(store: QdrantStore) -> None:
    points = make_points(10, captions=True)
    build(store, "captioned", points)
    hit = store.search("captioned", points[3].vectors[CAPTION_VECTOR], using=CAPTION_VECTOR, k=1)[0]
    assert hit.id == points[3].id
    info = store.collection_info("captioned")
    assert info is not None
    assert info.vector_names == [CAPTION_VECTOR, IMAGE_VECTOR]


def test_collection_info_describes_the_live_version(store: QdrantStore) -> None:
    assert store.collection_info("digits") is None
    name = build(store, "digits", make_points(12), fingerprint="abc")
    info = store.collection_info("digits")
    assert info is not None
    assert (info.name, info.alias, info.fingerprint, info.dim, info.count, info.complete) == (
        name,
        "digits",
        "abc",
        DIM,
        12,
        True,
    )
    assert info.extra["source"] == "src"
    by_name = store.collection_info(name)
    assert by_name is not None
    assert by_name.alias == "digits"


def test_new_version_swaps_the_alias_and_keeps_only_n(store: QdrantStore) -> None:
    first = build(store, "digits", make_points(5), keep=2)
    second = build(store, "digits", make_points(7), keep=2)
    third = build(store, "digits", make_points(9), keep=2)
    names = [v.name for v in store.versions("digits")]
    assert names == [third, second]
    assert first not in names
    info = store.collection_info("digits")
    assert info is not None
    assert (info.name, info.count) == (third, 9)


def test_pending_version_is_found_for_the_same_model_and_source_only(store: QdrantStore) -> None:
    pending = store.create_version(
        "digits", dim=DIM, fingerprint="fp1", vector_names=[IMAGE_VECTOR], source="src"
    )
    store.upsert(pending, make_points(3))
    assert store.pending_version("digits", fingerprint="fp1", source="src") == pending
    assert store.pending_version("digits", fingerprint="fp2", source="src") is None
    assert store.pending_version("digits", fingerprint="fp1", source="other") is None
    # Unfinished: readers never see it through the alias.
    assert store.collection_info("digits") is None


def test_ids_delete_and_count(store: QdrantStore) -> None:
    points = make_points(15)
    name = build(store, "digits", points)
    assert store.ids(name) == {p.id for p in points}
    store.delete(name, [points[0].id, points[1].id])
    assert store.count(name) == 13
    store.upsert(name, points[2:5])  # same ids: replaced, not duplicated
    assert store.count(name) == 13


def test_versions_and_alias_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    first = open_store(None, path, backend="local")
    assert isinstance(first, QdrantStore)
    name = build(first, "digits", make_points(6), fingerprint="persisted")
    first.close()
    reopened = open_store(None, path, backend="local")
    try:
        info = reopened.collection_info("digits")
        assert info is not None
        assert (info.name, info.fingerprint, info.count, info.complete) == (name, "persisted", 6, True)
    finally:
        reopened.close()


def test_a_locked_embedded_store_says_who_to_blame(store: QdrantStore, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="in use by another process"):
        open_store(None, tmp_path / "qdrant", backend="local")


def test_unreachable_server_is_unavailable() -> None:
    remote = open_store("http://127.0.0.1:9", None)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        remote.ping()


def test_bad_collection_names_are_refused(store: QdrantStore) -> None:
    with pytest.raises(StoreError, match="collection name"):
        store.create_version("../x", dim=DIM, fingerprint="f", vector_names=[IMAGE_VECTOR], source="s")


def test_cluster_layout_reaches_collection_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No Qdrant server runs here: record what the real client is asked, around local mode.
    from qdrant_client import QdrantClient

    from clipsearch.store import ClusterLayout

    client = QdrantClient(path=str(tmp_path / "qdrant"))
    asked: list[dict[str, object]] = []
    real = client.create_collection

    def recording(*args: object, **kwargs: object) -> bool:
        asked.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "create_collection", recording)
    layout = ClusterLayout(shard_number=6, replication_factor=2, write_consistency_factor=1)
    store = QdrantStore(client, where="test", local=True, layout=layout)
    try:
        store.create_version("digits", dim=DIM, fingerprint="fp", vector_names=["image"], source="src")
    finally:
        store.close()
    assert len(asked) == 1
    assert (
        asked[0]["shard_number"],
        asked[0]["replication_factor"],
        asked[0]["write_consistency_factor"],
    ) == (
        6,
        2,
        1,
    )


@pytest.mark.parametrize("backend", ["local", "edge"])
def test_rollback_restores_the_previous_version_and_keeps_what_it_replaced(
    tmp_path: Path, backend: str
) -> None:
    """Versions are kept by when they were last published, so after a rollback the version it
    replaced is the one kept for the next rollback, and a dropped candidate frees no live slot."""
    opened = open_store(None, tmp_path / "store", backend=backend)
    try:
        first = build(opened, "digits", make_points(5), fingerprint="fp1", keep=2)
        assert opened.previous_version("digits") is None
        second = build(opened, "digits", make_points(6), fingerprint="fp2", keep=2)
        previous = opened.previous_version("digits")
        assert previous is not None
        assert previous.name == first

        opened.restore_version("digits", first, keep=2, extra={"rolled_back_from": second})
        live = opened.collection_info("digits")
        assert live is not None
        assert (live.name, live.count, live.extra["rolled_back_from"]) == (first, 5, second)
        again = opened.previous_version("digits")
        assert again is not None
        assert again.name == second

        # A new build after the rollback: the rolled-back-from version (newer, but published
        # earlier) is the one pruned, the version that was live before the build stays.
        third = build(opened, "digits", make_points(7), fingerprint="fp3", keep=2)
        assert [v.name for v in opened.versions("digits")] == [third, first]

        candidate = opened.create_version(
            "digits", dim=DIM, fingerprint="fp4", vector_names=[IMAGE_VECTOR], source="src"
        )
        with pytest.raises(StoreError, match="never completed"):
            opened.restore_version("digits", candidate, keep=2)
        with pytest.raises(StoreError, match="is live"):
            opened.drop_version("digits", third)
        opened.drop_version("digits", candidate)
        assert [v.name for v in opened.versions("digits")] == [third, first]
    finally:
        opened.close()


def test_a_rollback_beside_a_reader_holding_the_versions(tmp_path: Path) -> None:
    """Embedded (Edge) store, two openers as two processes: the indexer rolls back while a gateway
    holds both versions; it neither opens them nor waits for them, and the reader follows."""
    from clipsearch.store.edge import EdgeStore

    indexer, gateway = EdgeStore(tmp_path / "store"), EdgeStore(tmp_path / "store")
    try:
        old_points, new_points = make_points(5), make_points(6)
        old = build(indexer, "digits", old_points, fingerprint="fp1", keep=2)
        query = old_points[0].vectors[IMAGE_VECTOR]
        assert gateway.search("digits", query, k=1)[0].score == pytest.approx(1.0, abs=1e-5)  # holds old
        new = build(indexer, "digits", new_points, fingerprint="fp2", keep=2)
        assert gateway.collection_info("digits").name == new  # type: ignore[union-attr]
        gateway.search("digits", query, k=1)  # holds new too

        previous = indexer.previous_version("digits")
        assert previous is not None
        assert (previous.name, previous.count) == (old, 5)
        indexer.restore_version("digits", old, keep=2, extra={"rolled_back_from": new})
        live = gateway.collection_info("digits")
        assert live is not None
        assert (live.name, live.extra["rolled_back_from"]) == (old, new)
        assert gateway.search("digits", query, k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        indexer.close()
        gateway.close()
