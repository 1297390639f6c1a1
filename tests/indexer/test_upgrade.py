"""Model upgrades gated by evaluation, and rollback: the real indexer, a real encoder serving a
trained and an untrained tiny emoji model, the embedded store."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from clipsearch.checkpoint import weights_fingerprint
from clipsearch.encoder_client import EncoderClient, ImageNormalization
from clipsearch.media import MediaStore
from clipsearch.store import open_store
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from services.indexer.evaluation import build_query_set
from services.indexer.job import IndexerError, run_index, run_rollback
from services.indexer.settings import IndexerSettings
from services.indexer.sources import open_source
from tests.conftest import EmojiModels

MakeSettings = Callable[..., IndexerSettings]


@contextmanager
def serve(**models: Path) -> Iterator[str]:
    """An encoder on loopback serving `models` (name=checkpoint); yields its target."""
    settings = EncoderSettings(
        models=",".join(f"{name}={path}" for name, path in models.items()),
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        text_runtime="torch",
        cpu_mode="fp32",
        reload_s=0,
    )
    with serve_in_thread(settings) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def both_models(emoji_models: EmojiModels) -> Iterator[str]:
    with serve(better=emoji_models.better, worse=emoji_models.worse) as target:
        yield target


@pytest.fixture
def upgrade(make_settings: MakeSettings, emoji_layout: Path, both_models: str) -> MakeSettings:
    def settings(model: str, **overrides: object) -> IndexerSettings:
        values: dict[str, object] = {
            "encoder": both_models,
            "source": "emoji",
            "emoji_dir": emoji_layout,
            "collection": "emoji",
            "model": model,
            **overrides,
        }
        return make_settings(**values)

    return settings


def versions(settings: IndexerSettings) -> list[tuple[str, str, bool]]:
    """(version, model name, live) of every version, newest first."""
    store = open_store(None, settings.store_path)
    try:
        return [(v.name, v.extra["model_name"], v.alias == "emoji") for v in store.versions("emoji")]
    finally:
        store.close()


async def test_a_better_model_is_published_and_a_worse_one_is_not(upgrade: MakeSettings) -> None:
    first = await run_index(upgrade("worse"))
    assert first.published
    assert first.evaluation is not None
    assert first.evaluation.reason == "the first version"

    better = await run_index(upgrade("better"))
    assert better.published
    evaluation = better.evaluation
    assert evaluation is not None
    assert evaluation.candidate is not None
    assert evaluation.live is not None
    assert evaluation.gated
    assert evaluation.candidate.value >= evaluation.live.value
    assert evaluation.live.version == first.collection
    assert evaluation.live.recorded  # what the live version scored when it was published
    summary = better.summary()
    assert f"{evaluation.candidate.value:.3f}" in summary
    assert f"{evaluation.live.value:.3f}" in summary
    store = open_store(None, upgrade("better").store_path)
    try:
        live = store.collection_info("emoji")
    finally:
        store.close()
    assert live is not None
    assert live.name == better.collection
    recorded = live.extra["evaluation"]
    assert recorded["score"] == evaluation.candidate.value
    assert recorded["compared_with"]["score"] == evaluation.live.value
    assert recorded["compared_with"]["version"] == first.collection
    assert len(recorded["queries"]) == 15  # the six names and the nine keywords that are not one

    worse = await run_index(upgrade("worse"))
    assert not worse.published
    assert worse.evaluation is not None
    assert worse.evaluation.candidate is not None
    assert worse.evaluation.live is not None
    assert worse.evaluation.candidate.value < worse.evaluation.live.value
    assert "NOT published" in worse.summary()
    # Dropped: the live version and the one before it are still the two kept.
    assert versions(upgrade("worse")) == [
        (better.collection, "better", True),
        (first.collection, "worse", False),
    ]


async def test_a_live_version_without_a_comparable_score_is_measured_with_its_own_model(
    upgrade: MakeSettings,
) -> None:
    first = await run_index(upgrade("worse", eval_queries=6))  # another query set than the default
    report = await run_index(upgrade("better"))
    assert report.evaluation is not None
    live = report.evaluation.live
    assert live is not None
    assert (live.version, live.model_name, live.recorded) == (first.collection, "worse", False)
    assert report.published


async def test_no_gate_publishes_a_worse_model(upgrade: MakeSettings) -> None:
    await run_index(upgrade("better"))
    forced = await run_index(upgrade("worse", gate=False))
    assert forced.published
    assert forced.evaluation is not None
    assert forced.evaluation.reason == "--no-gate"
    assert forced.evaluation.live is not None  # still measured and reported


async def test_rollback_restores_the_previous_version_and_again_undoes_it(upgrade: MakeSettings) -> None:
    with pytest.raises(IndexerError, match="no collection"):
        await run_rollback(upgrade("better"))
    old = await run_index(upgrade("worse"))
    with pytest.raises(IndexerError, match="no earlier version"):
        await run_rollback(upgrade("better"))
    new = await run_index(upgrade("better"))
    assert new.published

    back = await run_rollback(upgrade("better"))
    assert (back.restored.name, back.replaced.name) == (old.collection, new.collection)
    assert back.restored.extra["rolled_back_from"] == new.collection
    assert old.collection in back.summary()
    assert versions(upgrade("better"))[1] == (old.collection, "worse", True)

    forward = await run_rollback(upgrade("better"))
    assert forward.restored.name == new.collection


async def test_rollback_is_refused_when_the_previous_model_is_not_served(
    upgrade: MakeSettings, emoji_models: EmojiModels
) -> None:
    await run_index(upgrade("worse"))
    await run_index(upgrade("better"))
    with serve(better=emoji_models.better) as only_better:
        with pytest.raises(IndexerError, match="does not serve") as refused:
            await run_rollback(upgrade("better", encoder=only_better))
        assert weights_fingerprint(emoji_models.worse)[:12] in str(refused.value)
    assert [live for *_, live in versions(upgrade("better"))] == [True, False]  # nothing moved


async def test_an_unserved_live_model_is_compared_by_its_recorded_score_or_refused(
    upgrade: MakeSettings, emoji_models: EmojiModels
) -> None:
    first = await run_index(upgrade("worse"))
    with serve(better=emoji_models.better) as only_better:
        # Another query set than the one the live version recorded: nothing to compare with.
        with pytest.raises(IndexerError, match="no longer serves"):
            await run_index(upgrade("better", encoder=only_better, eval_queries=5))
        assert versions(upgrade("better")) == [(first.collection, "worse", True)]  # nothing built
        # The same query set: the live version's recorded score stands in for a measurement.
        report = await run_index(upgrade("better", encoder=only_better))
    assert report.published
    assert report.evaluation is not None
    assert report.evaluation.live is not None
    assert report.evaluation.live.recorded
    assert "as recorded" in report.summary()


async def test_a_source_without_class_names_cannot_be_gated(
    make_settings: MakeSettings, tmp_path: Path, both_models: str
) -> None:
    from tests.indexer.conftest import write_png

    root = tmp_path / "captioned"
    lines = ["image_path,caption"]
    for index in range(4):
        write_png(root / f"{index}.png", seed=index)
        lines.append(f"{index}.png,picture number {index}")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")

    def settings(model: str, **overrides: object) -> IndexerSettings:
        return make_settings(
            encoder=both_models,
            source="csv",
            csv=root / "captions.csv",
            collection="pics",
            model=model,
            **overrides,
        )

    first = await run_index(settings("worse"))
    assert first.evaluation is not None
    assert first.evaluation.candidate is None  # no class names: no query set
    with pytest.raises(IndexerError, match="no class names"):
        await run_index(settings("better"))
    assert (await run_index(settings("better", gate=False))).published


def test_the_mnist_query_set_asks_each_digit_three_ways(
    make_settings: MakeSettings, mnist_files: Path
) -> None:
    source = open_source(make_settings())
    query_set = build_query_set(source.query_groups, source.items, limit=100, k=10)
    assert query_set is not None
    assert len(query_set.queries) == 30
    by_text = {query.text: query for query in query_set.queries}
    assert by_text["seven"].accept == ("7",)
    assert by_text["the number 7"].accept == ("7",)
    assert by_text["a handwritten seven"].relevant == 4  # 40 test images, labels cycling 0..9
    again = build_query_set(source.query_groups, source.items, limit=100, k=10)
    assert again is not None
    assert again.digest == query_set.digest
    smaller = build_query_set(source.query_groups, source.items, limit=5, k=10)
    assert smaller is not None
    assert [q.text for q in smaller.queries] == [q.text for q in query_set.queries[:5]]


async def test_the_indexer_waits_for_the_encoder_to_pick_up_a_new_checkpoint(
    make_settings: MakeSettings, emoji_layout: Path, emoji_models: EmojiModels, tmp_path: Path
) -> None:
    """The demo's upgrade step: name the new checkpoint's fingerprint and wait until it is served."""
    from clipsearch.checkpoint_files import copy_checkpoint

    models_dir = tmp_path / "models"
    copy_checkpoint(emoji_models.worse, models_dir / "emoji")
    settings = EncoderSettings(
        models_dir=models_dir, host="127.0.0.1", port=0, metrics_port=0, text_runtime="torch", reload_s=0.1
    )
    wanted = weights_fingerprint(emoji_models.better)
    with serve_in_thread(settings) as server:
        target = f"127.0.0.1:{server.port}"
        common = {"encoder": target, "source": "emoji", "emoji_dir": emoji_layout, "collection": "emoji"}
        await run_index(make_settings(model="emoji", **common))
        with pytest.raises(IndexerError, match="cannot embed with model"):
            await run_index(make_settings(model=wanted, **common))
        waiting = asyncio.create_task(run_index(make_settings(model=wanted, model_wait_s=120, **common)))
        copy_checkpoint(emoji_models.better, models_dir / "emoji")
        report = await waiting
    assert report.fingerprint == wanted
    assert report.published


async def test_line_art_is_embedded_as_a_drawing_of_the_model_and_kept_as_it_is(
    upgrade: MakeSettings, emoji_layout: Path, both_models: str
) -> None:
    """The emoji model records the line-art normalisation: its line-art images are embedded through
    it, as training and a drawn query see them (a drawing's vector finds them at cosine 1)."""
    settings = upgrade("better")
    await run_index(settings)
    line_art = (emoji_layout / "images" / "openmoji-line" / "2B50.png").read_bytes()
    async with EncoderClient(both_models) as client:
        assert (await client.model_info("better")).sketch_normalization == "line-art"
        drawn = (await client.embed_sketches([line_art], model="better"))[0]
        as_picture = (
            await client.embed("image", [line_art], model="better", normalization=ImageNormalization.OFF)
        ).vectors[0]
    assert float(drawn @ as_picture) < 0.9999  # the normalisation changes what the model sees
    store = open_store(None, settings.store_path)
    try:
        hit = store.search("emoji", drawn, k=1)[0]
    finally:
        store.close()
    assert (hit.payload["id"], hit.payload["style"]) == ("2B50", "openmoji-line")
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert MediaStore(settings.media_dir).path_for(hit.payload["media_key"]).read_bytes() == line_art


async def test_line_art_the_normalisation_finds_no_strokes_in_is_kept_as_it_is(
    upgrade: MakeSettings, emoji_layout: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "emoji"
    shutil.copytree(emoji_layout, layout)
    Image.new("RGBA", (72, 72), (0, 0, 0, 0)).save(layout / "images" / "openmoji-line" / "2B50.png")
    report = await run_index(upgrade("better", emoji_dir=layout))
    assert (report.count, report.errors) == (24, [])
