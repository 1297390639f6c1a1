"""The backends agree: qdrant-client local mode (QdrantStore), Qdrant Edge (EdgeStore) and,
when QDRANT_URL names one, a Qdrant server (QdrantStore over gRPC).

One scenario (upsert, delete, filters, named vectors, paging, versions and the alias swap,
pruning, reopen) runs through each backend and records what a caller can observe, with
version and alias names replaced by their role; the records must be equal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsearch.store import (
    CAPTION_VECTOR,
    IMAGE_VECTOR,
    FilterError,
    Point,
    StoreError,
    StoreUnavailable,
    VectorStore,
    open_store,
)
from clipsearch.store.base import MAX_FILTER_STRING_CHARS, MAX_FILTER_VALUES
from clipsearch.store.edge import EdgeStore

DIM = 8
Opener = Callable[[Path], VectorStore]
SERVER_URL = os.environ.get("QDRANT_URL") or None
NO_SERVER = "QDRANT_URL is not set: the Qdrant server leg needs one (e.g. QDRANT_URL=http://localhost:6333)"


def open_server(path: Path) -> VectorStore:
    if SERVER_URL is None:
        pytest.skip(NO_SERVER)
    return open_store(SERVER_URL, None, os.environ.get("QDRANT_API_KEY") or None)


EMBEDDED: dict[str, Opener] = {
    "local": lambda path: open_store(None, path, backend="local"),
    "edge": lambda path: EdgeStore(path),
}
BACKENDS: dict[str, Opener] = {**EMBEDDED, "server": open_server}


@pytest.fixture
def alias() -> Iterator[str]:
    """An alias of this test's own: a server is shared with other tests and earlier runs."""
    name = f"digits_{uuid.uuid4().hex[:8]}"
    yield name
    if SERVER_URL is not None:  # drop what the test left on the server
        from qdrant_client import QdrantClient

        client = QdrantClient(url=SERVER_URL, api_key=os.environ.get("QDRANT_API_KEY") or None)
        try:
            for collection in client.get_collections().collections:
                if collection.name.startswith(f"{name}__v"):
                    client.delete_collection(collection.name)
        finally:
            client.close()


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def make_points(n: int, *, start: int = 0, captions: bool = True) -> list[Point]:
    """Every third point has a caption vector too (if `captions`); labels 0-2, splits alternate."""
    points = []
    for i in range(start, start + n):
        vectors = {IMAGE_VECTOR: unit(i)}
        if captions and i % 3 == 0:
            vectors[CAPTION_VECTOR] = unit(10_000 + i)
        payload = {"label": i % 3, "split": "test" if i % 2 else "train", "source": "synthetic", "index": i}
        points.append(
            Point(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"p#{i}")), vectors=vectors, payload=payload)
        )
    return points


class Recorder:
    """What a caller sees, with physical version names replaced by roles (names differ by backend)."""

    def __init__(self) -> None:
        self.roles: dict[str, str] = {}
        self.record: dict[str, Any] = {}

    def name(self, collection: str, role: str) -> str:
        self.roles[collection] = role
        return collection

    def hits(self, key: str, hits: list[Any]) -> None:
        self.record[key] = [(h.id, round(h.score, 4), h.payload["index"]) for h in hits]

    def info(self, key: str, store: VectorStore, name_or_alias: str) -> None:
        info = store.collection_info(name_or_alias)
        self.record[key] = (
            None
            if info is None
            else {
                "name": self.roles.get(info.name, info.name),
                "alias": self.roles.get(info.alias or "", info.alias),
                "fingerprint": info.fingerprint,
                "dim": info.dim,
                "vector_names": sorted(info.vector_names),
                "count": info.count,
                "complete": info.complete,
                "source": info.extra.get("source"),
            }
        )


def searches(rec: Recorder, store: VectorStore, where: str, prefix: str) -> None:
    query = unit(99)
    rec.hits(f"{prefix}/plain", store.search(where, query, k=5))
    rec.hits(f"{prefix}/label", store.search(where, query, k=5, filter={"label": 2}))
    rec.hits(f"{prefix}/labels", store.search(where, query, k=5, filter={"label": [0, 2]}))
    rec.hits(f"{prefix}/split", store.search(where, query, k=5, filter={"split": "test"}))
    rec.hits(f"{prefix}/both", store.search(where, query, k=5, filter={"label": 1, "split": "train"}))
    rec.hits(f"{prefix}/float-label", store.search(where, query, k=3, filter={"label": 1.0}))
    rec.hits(f"{prefix}/page2", store.search(where, query, k=4, offset=4))
    rec.hits(f"{prefix}/caption", store.search(where, query, using=CAPTION_VECTOR, k=50))
    rec.hits(f"{prefix}/none", store.search(where, query, k=5, filter={"source": "elsewhere"}))


def scenario(open_backend: Opener, root: Path, alias: str = "digits") -> dict[str, Any]:
    rec = Recorder()
    rec.name(alias, "digits")
    store = open_backend(root)
    names = [IMAGE_VECTOR, CAPTION_VECTOR]
    v1 = rec.name(
        store.create_version(alias, dim=DIM, fingerprint="fp1", vector_names=names, source="s"), "v1"
    )
    rec.info("v1/new", store, v1)
    rec.info("alias/before-finish", store, alias)
    rec.record["pending"] = rec.roles.get(str(store.pending_version(alias, fingerprint="fp1", source="s")))
    rec.record["pending/other-source"] = store.pending_version(alias, fingerprint="fp1", source="t")
    points = make_points(40)
    store.upsert(v1, points[:25])
    store.upsert(v1, points[20:])  # overlapping batches: upsert, not duplicate
    rec.record["v1/count"] = store.count(v1)
    rec.record["v1/ids"] = sorted(store.ids(v1))
    store.delete(v1, [p.id for p in points[:5]])
    store.delete(v1, [])
    moved = Point(
        id=points[6].id, vectors={IMAGE_VECTOR: unit(99)}, payload={**points[6].payload, "label": 2}
    )
    store.upsert(v1, [moved])  # overwrite: new vector and payload
    rec.record["v1/count-after-delete"] = store.count(v1)
    rec.record["v1/ids-after-delete"] = sorted(store.ids(v1))
    store.finish_version(alias, v1, keep=2)
    rec.info("alias/v1", store, alias)
    searches(rec, store, alias, "v1")

    v2 = rec.name(
        store.create_version(alias, dim=DIM, fingerprint="fp2", vector_names=names, source="s"), "v2"
    )
    store.upsert(v2, make_points(30, start=100))
    rec.info("alias/while-building-v2", store, alias)  # readers still see v1
    rec.hits("alias/search-while-building-v2", store.search(alias, unit(99), k=3))
    store.finish_version(alias, v2, keep=2)
    rec.info("alias/v2", store, alias)
    rec.info("v1/after-swap", store, v1)
    searches(rec, store, alias, "v2")

    abandoned = rec.name(
        store.create_version(alias, dim=DIM, fingerprint="fp9", vector_names=[IMAGE_VECTOR], source="s"),
        "abandoned",
    )
    v3 = rec.name(
        store.create_version(alias, dim=DIM, fingerprint="fp3", vector_names=[IMAGE_VECTOR], source="s"),
        "v3",
    )
    store.upsert(v3, make_points(12, start=200, captions=False))
    store.finish_version(alias, v3, keep=2)
    rec.info("alias/v3", store, alias)
    rec.info("v1/pruned", store, v1)  # beyond keep=2
    rec.info("v2/kept", store, v2)
    rec.info("abandoned/pruned", store, abandoned)  # unfinished and older than the live version
    rec.hits("v3/plain", store.search(alias, unit(99), k=5))
    rec.hits("v2/by-name", store.search(v2, unit(99), k=5))
    store.close()

    reopened = open_backend(root)  # persistence: everything above survives a restart
    rec.info("reopened/alias", reopened, alias)
    rec.info("reopened/v2", reopened, v2)
    rec.hits("reopened/plain", reopened.search(alias, unit(99), k=5))
    rec.hits("reopened/v2-filter", reopened.search(v2, unit(99), k=5, filter={"label": [1, 2]}))
    rec.record["reopened/v2-ids"] = sorted(reopened.ids(v2))
    reopened.close()
    return rec.record


@pytest.mark.slow
def test_local_mode_and_edge_observe_the_same(tmp_path: Path) -> None:
    local = scenario(BACKENDS["local"], tmp_path / "local")
    edge = scenario(BACKENDS["edge"], tmp_path / "edge")
    assert local.keys() == edge.keys()
    for key in local:
        assert edge[key] == local[key], key
    # The scenario observed something real (not two empty records agreeing).
    assert local["v1/count"] == 40
    assert local["v1/count-after-delete"] == 35
    assert local["alias/v3"]["name"] == "v3"
    assert local["v1/pruned"] is None
    assert len(local["v1/caption"]) == len([i for i in range(5, 40) if i % 3 == 0 and i != 6])


def test_a_qdrant_server_observes_the_same(tmp_path: Path, alias: str) -> None:
    if SERVER_URL is None:
        pytest.skip(NO_SERVER)
    local = scenario(BACKENDS["local"], tmp_path / "local")
    server = scenario(BACKENDS["server"], tmp_path / "server", alias)
    assert local.keys() == server.keys()
    for key in local:
        assert server[key] == local[key], key
    assert server["v1/count-after-delete"] == 35


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Opener:
    return BACKENDS[request.param]


@pytest.fixture(params=sorted(EMBEDDED))
def embedded(request: pytest.FixtureRequest) -> Opener:
    return EMBEDDED[request.param]


def publish(store: VectorStore, alias: str, points: list[Point]) -> None:
    """`points` as the one live version of `alias`."""
    name = store.create_version(alias, dim=DIM, fingerprint="fp", vector_names=[IMAGE_VECTOR], source="s")
    store.upsert(name, points)
    store.finish_version(alias, name, keep=1)


def test_user_mistakes_are_clear_errors(backend: Opener, tmp_path: Path, alias: str) -> None:
    store = backend(tmp_path / "store")
    try:
        publish(store, alias, make_points(5, captions=False))
        with pytest.raises(FilterError, match="unknown filter field"):
            store.search(alias, unit(1), filter={"colour": "red"})
        with pytest.raises(FilterError, match="takes int"):
            store.search(alias, unit(1), filter={"label": "seven"})
        with pytest.raises(StoreError):
            store.search("nowhere", unit(1))
        with pytest.raises(StoreError):
            store.search(alias, unit(1), using=CAPTION_VECTOR)
        with pytest.raises(StoreError):
            store.search(alias, np.ones(DIM + 1, dtype=np.float32))
        with pytest.raises(StoreError, match="no '__v'"):
            store.create_version("a/b", dim=DIM, fingerprint="fp", vector_names=[IMAGE_VECTOR], source="s")
        assert store.collection_info("nowhere") is None
    finally:
        store.close()


def test_open_store_embeds_edge_unless_the_path_holds_a_local_mode_store(tmp_path: Path) -> None:
    default = open_store(None, tmp_path / "new")
    try:
        assert isinstance(default, EdgeStore)
    finally:
        default.close()
    open_store(None, tmp_path / "old", backend="local").close()  # written by qdrant-client local mode
    existing = open_store(None, tmp_path / "old")
    try:
        assert not isinstance(existing, EdgeStore)  # its data stays readable
    finally:
        existing.close()
    with pytest.raises(StoreError, match="unknown embedded store backend"):
        open_store(None, tmp_path / "x", backend="faiss")


def test_a_second_local_mode_client_gets_store_unavailable(tmp_path: Path) -> None:
    holder = open_store(None, tmp_path / "store", backend="local")
    try:
        with pytest.raises(StoreUnavailable, match="another process"):
            open_store(None, tmp_path / "store", backend="local")
    finally:
        holder.close()
    open_store(None, tmp_path / "store", backend="local").close()  # released on close


def test_edge_is_shared_by_processes_one_version_each(tmp_path: Path) -> None:
    """Two clients of one Edge store (as a gateway and an indexer are): each version is open in
    one of them at a time; a new version is built and published beside a held one, the reader
    follows it, and the old one is dropped once the reader has let go of it."""
    reader, writer = EdgeStore(tmp_path / "store"), EdgeStore(tmp_path / "store")
    try:
        first = writer.create_version(
            "digits", dim=DIM, fingerprint="fp1", vector_names=[IMAGE_VECTOR], source="s"
        )
        writer.upsert(first, make_points(4, captions=False))
        writer.finish_version("digits", first, keep=1)
        assert len(reader.search("digits", unit(0), k=1)) == 1  # the reader now holds the first version
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            writer.count(first)
        second = writer.create_version(
            "digits", dim=DIM, fingerprint="fp2", vector_names=[IMAGE_VECTOR], source="s"
        )
        writer.upsert(second, make_points(6, captions=False))
        writer.finish_version("digits", second, keep=1)  # the held first version is not dropped
        info = reader.collection_info("digits")
        assert info is not None
        assert (info.name, info.fingerprint, info.count) == (second, "fp2", 6)
        assert [version.name for version in writer.versions("digits")] == [second, first]
    finally:
        reader.close()
    assert writer.prune_versions("digits", keep=1) == [first]  # let go of: now it goes
    writer.close()


def test_edge_writes_survive_a_crash_without_close(tmp_path: Path) -> None:
    """The WAL makes acknowledged upserts durable even when the process dies without flushing."""
    root = tmp_path / "edge"
    child = textwrap.dedent(
        f"""
        import os, numpy as np
        from clipsearch.store.edge import EdgeStore
        from clipsearch.store import Point
        store = EdgeStore({str(root)!r})
        name = store.create_version("digits", dim=4, fingerprint="fp", vector_names=["image"], source="s")
        store.upsert(name, [Point(id="00000000-0000-0000-0000-00000000000%d" % i,
                                  vectors={{"image": np.eye(4, dtype=np.float32)[i]}},
                                  payload={{"label": i}}) for i in range(4)])
        print(name, flush=True)
        os._exit(0)  # no close, no flush
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip()
    store = EdgeStore(root)  # the dead process's lock is gone with it
    try:
        assert store.count(name) == 4
        assert store.pending_version("digits", fingerprint="fp", source="s") == name
        hits = store.search(name, np.array([0, 0, 1, 0], dtype=np.float32), k=1)
        assert hits[0].payload == {"label": 2}
    finally:
        store.close()


# Filters that must be refused before they reach a store (issue 17: a lone surrogate reached
# Qdrant Edge's MatchValue and gave a 500; an int past 4,300 digits could not even be printed).
HOSTILE_FILTERS: list[tuple[Any, str]] = [
    ({"split": "\ud800"}, "not valid Unicode"),
    ({"split": ["test", "tr\udfffain"]}, "not valid Unicode"),
    ({"style": "\udbff"}, "not valid Unicode"),
    ({"label": 10**5000}, "64-bit"),
    ({"label": [1, -(2**63) - 1]}, "64-bit"),
    ({"label": 2**63}, "64-bit"),
    ({"label": 1e300}, "64-bit"),
    ({"label": float("nan")}, "takes int"),
    ({"label": [float("-inf")]}, "takes int"),
    ({"label": True}, "takes int"),
    ({"label": 1.5}, "takes int"),
    ({"label": {"gt": 3}}, "takes int"),
    ({"split": 7}, "takes str"),
    ({"group": None}, "takes str"),
    ({"split": "x" * (MAX_FILTER_STRING_CHARS + 1)}, f"at most {MAX_FILTER_STRING_CHARS} characters"),
    ({"subgroup": ["a"] * (MAX_FILTER_VALUES + 1)}, f"the limit is {MAX_FILTER_VALUES}"),
    ({"label": []}, "empty list"),
    ({"\ud800": 1}, "unknown filter field"),
    ({"x" * 100_000: 1}, "unknown filter field"),
    ("label=7", "must be an object"),
]

EMOJI_PAYLOADS = [
    {"label": 0, "class_name": "😀 grinning face", "style": "google", "group": "Smileys & Emotion"},
    {"label": 1, "class_name": "cat", "style": "openmoji-line", "group": "Animals & Nature"},
    {"label": 2, "class_name": "x" * MAX_FILTER_STRING_CHARS, "style": "twitter", "group": "Objects"},
]


def emoji_points() -> list[Point]:
    return [
        Point(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"e#{i}")),
            vectors={IMAGE_VECTOR: unit(500 + i)},
            payload={**payload, "subgroup": f"sub-{i}", "index": i},
        )
        for i, payload in enumerate(EMOJI_PAYLOADS)
    ]


def test_hostile_filters_are_refused_before_the_store(backend: Opener, tmp_path: Path, alias: str) -> None:
    store = backend(tmp_path / "store")
    try:
        publish(store, alias, emoji_points())
        for spec, message in HOSTILE_FILTERS:
            with pytest.raises(FilterError, match=message) as refused:
                store.search(alias, unit(1), filter=spec)
            assert len(str(refused.value)) < 300  # fit for a user, whatever the input's size
        # The store is still fine after all of them.
        assert len(store.search(alias, unit(1), k=10)) == len(EMOJI_PAYLOADS)
    finally:
        store.close()


def test_filters_at_the_bounds_and_on_emoji_fields(backend: Opener, tmp_path: Path, alias: str) -> None:
    store = backend(tmp_path / "store")
    try:
        publish(store, alias, emoji_points())

        def indexes(spec: dict[str, Any]) -> list[int]:
            return sorted(hit.payload["index"] for hit in store.search(alias, unit(1), k=10, filter=spec))

        assert indexes({"label": 2**63 - 1}) == []
        assert indexes({"label": [-(2**63), 1.0]}) == [1]
        assert indexes({"label": list(range(MAX_FILTER_VALUES))}) == [0, 1, 2]
        assert indexes({"class_name": "x" * MAX_FILTER_STRING_CHARS}) == [2]
        assert indexes({"class_name": "😀 grinning face"}) == [0]
        assert indexes({"style": "openmoji-line"}) == [1]
        assert indexes({"style": ["google", "twitter"], "group": "Objects"}) == [2]
        assert indexes({"subgroup": ["sub-0", "sub-1"]}) == [0, 1]
        assert indexes({"group": "Smileys & Emotion", "style": "twitter"}) == []
    finally:
        store.close()
