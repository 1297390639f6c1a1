"""The indexer end to end: a real encoder server on loopback, the embedded Qdrant in tmp_path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsearch.checkpoint import weights_fingerprint
from clipsearch.encoder_client import EncoderClient
from clipsearch.media import MediaStore
from clipsearch.store import CAPTION_VECTOR, IMAGE_VECTOR, FingerprintMismatch, StoreUnavailable, open_store
from services.indexer.job import IndexerError, Interrupted, run_index
from services.indexer.settings import IndexerSettings
from tests.indexer.conftest import write_png

MakeSettings = Callable[..., IndexerSettings]


def live_ids(settings: IndexerSettings) -> set[str]:
    store = open_store(None, settings.store_path)
    try:
        info = store.collection_info(settings.collection)
        assert info is not None
        return store.ids(info.name)
    finally:
        store.close()


async def test_mnist_index_writes_every_image_with_payload_and_media(
    make_settings: MakeSettings, mnist_files: Path, encoder_target: str
) -> None:
    settings = make_settings()
    report = await run_index(settings)
    assert (report.total, report.indexed, report.count, report.errors) == (40, 40, 40, [])
    assert report.published

    store = open_store(None, settings.store_path)
    try:
        info = store.collection_info("digits")
        assert info is not None
        assert (info.count, info.complete, info.vector_names, info.dim) == (40, True, [IMAGE_VECTOR], 16)
        async with EncoderClient(encoder_target) as client:
            assert info.fingerprint == (await client.model_info()).fingerprint
        hits = store.search("digits", np.ones(16, dtype=np.float32), k=40, filter={"label": 3})
    finally:
        store.close()
    assert len(hits) == 4  # labels cycle 0..9 over 40 images
    payload = hits[0].payload
    assert payload["label"] == 3
    assert payload["split"] == "test"
    assert payload["source"] == "mnist"
    assert payload["model_fingerprint"] == info.fingerprint
    assert MediaStore(settings.media_dir).path_for(payload["media_key"]).is_file()


async def test_both_splits_are_indexed(make_settings: MakeSettings, mnist_files: Path) -> None:
    report = await run_index(make_settings(mnist_split="both"))
    assert (report.indexed, report.count) == (64, 64)


@pytest.mark.slow
async def test_rerunning_gives_the_same_ids_and_no_duplicates(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    settings = make_settings(keep_versions=2)
    first = await run_index(settings)
    ids = live_ids(settings)
    second = await run_index(settings)
    assert second.collection != first.collection
    assert second.count == 40
    assert live_ids(settings) == ids
    incremental = await run_index(make_settings(mode="incremental"))
    assert (incremental.indexed, incremental.already_present, incremental.count) == (0, 40, 40)
    third = await run_index(settings)
    store = open_store(None, settings.store_path)
    try:
        assert [v.name for v in store.versions("digits")] == [third.collection, second.collection]
    finally:
        store.close()


async def test_an_interrupted_full_index_resumes_to_the_same_result(
    make_settings: MakeSettings, mnist_files: Path, tmp_path: Path
) -> None:
    reference = make_settings(store_path=tmp_path / "reference")
    await run_index(reference)

    settings = make_settings()
    with pytest.raises(Interrupted):
        await run_index(settings, stop_after_batches=2)
    store = open_store(None, settings.store_path)
    try:
        assert store.collection_info("digits") is None  # nothing half-built is visible
        pending = store.versions("digits")[0]
        assert (pending.complete, pending.count) == (False, 16)
    finally:
        store.close()

    resumed = await run_index(settings)
    assert resumed.resumed
    assert resumed.collection == pending.name
    assert (resumed.already_present, resumed.indexed, resumed.count) == (16, 24, 40)
    assert live_ids(settings) == live_ids(reference)


async def test_readers_never_see_a_partial_collection_during_a_rebuild(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    settings = make_settings(batch_size=4)
    store = open_store(None, settings.store_path)
    try:
        first = await run_index(settings, store=store)
        seen: list[tuple[str, int, int]] = []
        stop, swapped = threading.Event(), threading.Event()

        def read() -> None:
            query = np.ones(16, dtype=np.float32)
            while not stop.is_set():
                info = store.collection_info("digits")
                hits = store.search("digits", query, k=100)
                assert info is not None
                seen.append((info.name, info.count, len(hits)))
                if info.name != first.collection:
                    swapped.set()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            rebuilt = await run_index(settings, store=store)
            await asyncio.to_thread(swapped.wait, 10)  # let the reader see the new version too
        finally:
            stop.set()
            reader.join()
    finally:
        store.close()
    # The reader saw the old version, then the new one, and every answer was complete.
    assert {name for name, _, _ in seen} == {first.collection, rebuilt.collection}
    assert {(count, hits) for _, count, hits in seen} == {(40, 40)}


async def test_incremental_refuses_a_collection_built_by_another_model(
    make_settings: MakeSettings, mnist_files: Path, other_tiny_checkpoint: Path
) -> None:
    from services.encoder.server import serve_in_thread
    from services.encoder.settings import EncoderSettings

    first = await run_index(make_settings())
    other = EncoderSettings(checkpoint=str(other_tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0)
    with serve_in_thread(other) as running:
        target = f"127.0.0.1:{running.port}"
        with pytest.raises(FingerprintMismatch, match="--mode full"):
            await run_index(make_settings(encoder=target, mode="incremental"))
        # Not gated: which of two random models scores better is not this test's question.
        rebuilt = await run_index(make_settings(encoder=target, mode="full", gate=False))
    assert rebuilt.fingerprint != first.fingerprint
    assert rebuilt.count == 40
    store = open_store(None, make_settings().store_path)
    try:
        info = store.collection_info("digits")
        assert info is not None
        assert (info.name, info.fingerprint) == (rebuilt.collection, rebuilt.fingerprint)
    finally:
        store.close()


async def test_corrupt_images_in_a_folder_are_reported_and_skipped(
    make_settings: MakeSettings, image_folder: Path
) -> None:
    (image_folder / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    report = await run_index(make_settings(source="folder", folder=image_folder, collection="pets"))
    assert (report.total, report.indexed, report.count) == (7, 6, 6)
    assert [bad.relative_path for bad in report.errors] == ["cats/broken.png"]
    assert "cats/broken.png" in report.summary()


async def test_bad_items_fail_the_run_when_configured(
    make_settings: MakeSettings, image_folder: Path
) -> None:
    (image_folder / "dogs" / "broken.jpg").write_bytes(b"garbage")
    settings = make_settings(source="folder", folder=image_folder, collection="pets", fail_on_bad_items=True)
    with pytest.raises(IndexerError, match=r"dogs/broken\.jpg"):
        await run_index(settings)
    store = open_store(None, settings.store_path)
    try:
        assert store.collection_info("pets") is None
    finally:
        store.close()


async def test_caption_csv_gets_caption_vectors_and_reports_bad_rows(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    root = tmp_path / "captioned"
    for i in range(4):
        write_png(root / "images" / f"{i}.png", seed=10 + i)
    lines = [
        "image_path,caption,label",
        *(f"images/{i}.png,a photo of thing {i},{i}" for i in range(4)),
        "images/missing.png,a photo that is not there,9",
        "only-one-field",
    ]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    settings = make_settings(source="csv", csv=root / "captions.csv", collection="captioned")
    report = await run_index(settings)
    assert (report.indexed, report.count) == (4, 4)
    reported = {bad.relative_path for bad in report.errors}
    assert reported == {"images/missing.png", "captions.csv:7"}

    store = open_store(None, settings.store_path)
    try:
        info = store.collection_info("captioned")
        assert info is not None
        assert info.vector_names == [CAPTION_VECTOR, IMAGE_VECTOR]
        hits = store.search("captioned", np.ones(16, dtype=np.float32), using=CAPTION_VECTOR, k=10)
    finally:
        store.close()
    assert {h.payload["caption"] for h in hits} == {f"a photo of thing {i}" for i in range(4)}
    assert {h.payload["label"] for h in hits} == {0, 1, 2, 3}


async def test_incremental_adds_new_files_and_deletes_removed_ones(
    make_settings: MakeSettings, image_folder: Path
) -> None:
    settings = make_settings(source="folder", folder=image_folder, collection="pets")
    first = await run_index(settings)
    (image_folder / "cats" / "1.png").unlink()
    write_png(image_folder / "birds" / "new.png", seed=99)
    report = await run_index(
        make_settings(source="folder", folder=image_folder, collection="pets", mode="incremental")
    )
    assert report.collection == first.collection  # the live version, updated in place
    assert (report.indexed, report.deleted, report.already_present, report.count) == (1, 1, 5, 6)
    store = open_store(None, settings.store_path)
    try:
        paths = {
            h.payload["relative_path"] for h in store.search("pets", np.ones(16, dtype=np.float32), k=10)
        }
    finally:
        store.close()
    assert "birds/new.png" in paths
    assert "cats/1.png" not in paths


async def test_a_store_held_by_another_process_is_a_clear_error(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    settings = make_settings()
    await run_index(settings)
    holder = open_store(None, settings.store_path)
    try:
        assert holder.collection_info(settings.collection) is not None  # holds the live version
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            await run_index(make_settings(mode="incremental"))  # would write into the held version
        beside = await run_index(settings)  # a full index builds a new version beside it
    finally:
        holder.close()
    assert beside.published


class ThreadRecordingStore:
    """A real store that notes, for each call, whether it ran on the event loop's thread."""

    def __init__(self, store: Any, loop_thread: int) -> None:
        self._store = store
        self._loop_thread = loop_thread
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, threading.get_ident() == self._loop_thread))
            return attribute(*args, **kwargs)

        return call


async def test_store_calls_run_off_the_event_loop(make_settings: MakeSettings, image_folder: Path) -> None:
    settings = make_settings(source="folder", folder=image_folder, collection="pets")
    store = open_store(None, settings.store_path)
    recording = ThreadRecordingStore(store, threading.get_ident())
    try:
        await run_index(settings, store=recording)  # type: ignore[arg-type]
        (image_folder / "cats" / "1.png").unlink()
        incremental = make_settings(
            source="folder", folder=image_folder, collection="pets", mode="incremental"
        )
        report = await run_index(incremental, store=recording)  # type: ignore[arg-type]
    finally:
        store.close()
    assert (report.deleted, report.count) == (1, 5)
    called = {name for name, _ in recording.calls}
    expected = {"collection_info", "pending_version", "create_version", "ids", "delete", "upsert", "count"}
    assert expected | {"finish_version"} <= called
    assert [name for name, on_loop in recording.calls if on_loop] == []


async def test_indexer_model_names_the_encoder_model_that_embeds_the_collection(
    make_settings: MakeSettings,
    mnist_files: Path,
    two_model_encoder: Any,
    other_tiny_checkpoint: Path,
) -> None:
    target = f"127.0.0.1:{two_model_encoder.port}"
    settings = make_settings(encoder=target, model="second", limit=8)
    report = await run_index(settings)
    assert report.indexed == 8
    store = open_store(None, settings.store_path)
    try:
        info = store.collection_info(settings.collection)
        assert info is not None
        assert info.fingerprint == weights_fingerprint(other_tiny_checkpoint)
        (hit,) = store.search(settings.collection, np.ones(16, dtype=np.float32), k=1)
    finally:
        store.close()
    assert hit.payload["model_fingerprint"] == info.fingerprint
    with pytest.raises(IndexerError, match="first, second"):  # several models: the run must name one
        await run_index(make_settings(encoder=target))
    with pytest.raises(IndexerError, match="third"):
        await run_index(make_settings(encoder=target, model="third"))
