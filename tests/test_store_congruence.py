"""The embedded backends agree: qdrant-client local mode (QdrantStore) and Qdrant Edge (EdgeStore).

One scenario (upsert, delete, filters, named vectors, paging, versions and the alias swap,
pruning, reopen) runs through each backend and records what a caller can observe, with
version names replaced by their role; the two records must be equal.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsearch.edge_store import EdgeStore
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

DIM = 8
Opener = Callable[[Path], VectorStore]
BACKENDS: dict[str, Opener] = {
    "local": lambda path: open_store(None, path, backend="local"),
    "edge": lambda path: EdgeStore(path),
}


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
                "alias": info.alias,
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


def scenario(open_backend: Opener, root: Path) -> dict[str, Any]:
    rec = Recorder()
    store = open_backend(root)
    names = [IMAGE_VECTOR, CAPTION_VECTOR]
    v1 = rec.name(
        store.create_version("digits", dim=DIM, fingerprint="fp1", vector_names=names, source="s"), "v1"
    )
    rec.info("v1/new", store, v1)
    rec.info("alias/before-finish", store, "digits")
    rec.record["pending"] = rec.roles.get(str(store.pending_version("digits", fingerprint="fp1", source="s")))
    rec.record["pending/other-source"] = store.pending_version("digits", fingerprint="fp1", source="t")
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
    store.finish_version("digits", v1, keep=2)
    rec.info("alias/v1", store, "digits")
    searches(rec, store, "digits", "v1")

    v2 = rec.name(
        store.create_version("digits", dim=DIM, fingerprint="fp2", vector_names=names, source="s"), "v2"
    )
    store.upsert(v2, make_points(30, start=100))
    rec.info("alias/while-building-v2", store, "digits")  # readers still see v1
    rec.hits("alias/search-while-building-v2", store.search("digits", unit(99), k=3))
    store.finish_version("digits", v2, keep=2)
    rec.info("alias/v2", store, "digits")
    rec.info("v1/after-swap", store, v1)
    searches(rec, store, "digits", "v2")

    abandoned = rec.name(
        store.create_version("digits", dim=DIM, fingerprint="fp9", vector_names=[IMAGE_VECTOR], source="s"),
        "abandoned",
    )
    v3 = rec.name(
        store.create_version("digits", dim=DIM, fingerprint="fp3", vector_names=[IMAGE_VECTOR], source="s"),
        "v3",
    )
    store.upsert(v3, make_points(12, start=200, captions=False))
    store.finish_version("digits", v3, keep=2)
    rec.info("alias/v3", store, "digits")
    rec.info("v1/pruned", store, v1)  # beyond keep=2
    rec.info("v2/kept", store, v2)
    rec.info("abandoned/pruned", store, abandoned)  # unfinished and older than the live version
    rec.hits("v3/plain", store.search("digits", unit(99), k=5))
    rec.hits("v2/by-name", store.search(v2, unit(99), k=5))
    store.close()

    reopened = open_backend(root)  # persistence: everything above survives a restart
    rec.info("reopened/alias", reopened, "digits")
    rec.info("reopened/v2", reopened, v2)
    rec.hits("reopened/plain", reopened.search("digits", unit(99), k=5))
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


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Opener:
    return BACKENDS[request.param]


def test_user_mistakes_are_clear_errors(backend: Opener, tmp_path: Path) -> None:
    store = backend(tmp_path / "store")
    try:
        name = store.create_version(
            "digits", dim=DIM, fingerprint="fp", vector_names=[IMAGE_VECTOR], source="s"
        )
        store.upsert(name, make_points(5, captions=False))
        store.finish_version("digits", name, keep=1)
        with pytest.raises(FilterError, match="unknown filter field"):
            store.search("digits", unit(1), filter={"colour": "red"})
        with pytest.raises(FilterError, match="takes int"):
            store.search("digits", unit(1), filter={"label": "seven"})
        with pytest.raises(StoreError):
            store.search("nowhere", unit(1))
        with pytest.raises(StoreError):
            store.search("digits", unit(1), using=CAPTION_VECTOR)
        with pytest.raises(StoreError):
            store.search("digits", np.ones(DIM + 1, dtype=np.float32))
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


def test_a_second_process_gets_store_unavailable(backend: Opener, tmp_path: Path) -> None:
    holder = backend(tmp_path / "store")
    try:
        with pytest.raises(StoreUnavailable, match="another process"):
            backend(tmp_path / "store")
    finally:
        holder.close()
    backend(tmp_path / "store").close()  # released on close


def test_edge_writes_survive_a_crash_without_close(tmp_path: Path) -> None:
    """The WAL makes acknowledged upserts durable even when the process dies without flushing."""
    root = tmp_path / "edge"
    child = textwrap.dedent(
        f"""
        import os, numpy as np
        from clipsearch.edge_store import EdgeStore
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
