"""The indexer's emoji source on a generated emoji-layout directory, through the real encoder on
loopback into the embedded store: payloads, caption vectors, credits, styles, bad data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipsearch.encoder_client import EncoderClient, EncoderInputError
from clipsearch.store import CAPTION_VECTOR, IMAGE_VECTOR, open_store
from services.indexer.job import IndexerError, run_index
from services.indexer.settings import IndexerSettings
from services.indexer.sources import emoji_captions, open_source
from tests.training.conftest import EMOJI_CONCEPTS, write_emoji_dir

MakeSettings = Callable[..., IndexerSettings]
STYLES = ["google", "twitter", "openmoji", "openmoji-line"]


@pytest.fixture
def emoji_dir(tmp_path: Path) -> Path:
    """Six concepts in four styles, and a malformed emoji.csv row (line 4, id 1F7E5)."""
    return write_emoji_dir(tmp_path / "emoji")


def emoji_settings(make_settings: MakeSettings, emoji_dir: Path, **overrides: object) -> IndexerSettings:
    return make_settings(source="emoji", emoji_dir=emoji_dir, collection="emoji", **overrides)


async def test_every_style_is_indexed_with_its_payload_captions_and_credits(
    make_settings: MakeSettings, emoji_dir: Path, encoder_target: str
) -> None:
    settings = emoji_settings(make_settings, emoji_dir)
    report = await run_index(settings)
    assert (report.total, report.indexed, report.count) == (24, 24, 24)
    # The malformed row is reported with its line and id, and skipped.
    assert len(report.errors) == 1
    assert "emoji.csv:4" in report.errors[0].relative_path
    assert "1F7E5" in report.errors[0].message
    assert "1F7E5" in report.summary()

    label = "red circle: circle, geometric, red"
    async with EncoderClient(encoder_target) as client:
        caption_vector = (await client.embed_texts([label]))[0]
    store = open_store(None, settings.store_path)
    try:
        info = store.collection_info("emoji")
        assert info is not None
        assert info.vector_names == sorted([IMAGE_VECTOR, CAPTION_VECTOR])
        hits = store.search("emoji", caption_vector, using=CAPTION_VECTOR, k=8)
        styles = store.facet("emoji", "style", limit=10)
        groups = store.facet("emoji", "group", limit=10)
    finally:
        store.close()
    # One caption per item, the label and its keywords: the four styles of the concept answer at
    # cosine 1, which is how target=captions names an emoji.
    assert {hit.payload["class_name"] for hit in hits[:4]} == {"red circle"}
    assert all(hit.score == pytest.approx(1.0, abs=1e-4) for hit in hits[:4])
    assert hits[4].score < 0.9999
    payload = next(hit.payload for hit in hits if hit.payload["style"] == "openmoji-line")
    assert {
        key: payload[key] for key in ("class_name", "id", "emoji", "style", "group", "subgroup", "tags")
    } == {
        "class_name": "red circle",
        "id": "1F534",
        "emoji": "🔴",
        "style": "openmoji-line",
        "group": "symbols",
        "subgroup": "geometric",
        "tags": ["circle", "geometric", "red"],
    }
    assert payload["relative_path"] == "images/openmoji-line/1F534.png"
    assert styles == dict.fromkeys(STYLES, 6)
    assert groups == {"symbols": 20, "travel & places": 4}
    credits = info.extra["attribution"]
    for credit in ("Noto Emoji", "Apache License 2.0", "Twemoji", "CC BY 4.0", "OpenMoji", "CC BY-SA 4.0"):
        assert credit in credits
    assert "emojibase" in credits
    # The evaluation query set is recorded with the version: names and specific keywords.
    evaluation = info.extra["evaluation"]
    texts = {query["text"]: query for query in evaluation["queries"]}
    assert texts["red circle"] == {"text": "red circle", "accept": ["red circle"], "relevant": 4}
    assert texts["geometric"]["accept"] == sorted(
        label for _, _, label, tags, *_ in EMOJI_CONCEPTS if "geometric" in tags
    )
    assert evaluation["score"] is not None
    assert info.extra["model_name"]


def test_the_caption_is_the_label_and_its_keywords_then_shorter_forms() -> None:
    assert emoji_captions("teapot", ("drink", "pot", "tea")) == (
        "teapot: drink, pot, tea",
        "teapot: drink, pot",
        "teapot: drink",
        "teapot",
    )
    assert emoji_captions("star", ("Star",)) == ("star",)  # a keyword that repeats the label adds nothing
    assert emoji_captions("star", ()) == ("star",)


async def test_a_caption_too_long_for_the_model_is_shortened_not_dropped(
    make_settings: MakeSettings, emoji_dir: Path, encoder_target: str
) -> None:
    """The tiny model reads 32 tokens, as the emoji model does: a concept with many keywords keeps
    as many as fit, as training's truncation did."""
    rows = (emoji_dir / "emoji.csv").read_text(encoding="utf-8").splitlines()
    many = "|".join(f"keyword{number}" for number in range(40))
    (emoji_dir / "emoji.csv").write_text(
        "\r\n".join(row.replace("medium|star", many) if row.startswith("2B50,") else row for row in rows),
        encoding="utf-8",
    )
    settings = emoji_settings(make_settings, emoji_dir)
    report = await run_index(settings)
    assert (report.count, len(report.errors)) == (24, 1)  # only the malformed row
    forms = emoji_captions("star", tuple(many.split("|")))
    async with EncoderClient(encoder_target) as client:
        with pytest.raises(EncoderInputError):
            await client.embed_texts([forms[0]])
        accepted = []
        for form in forms:
            try:
                accepted.append((form, (await client.embed_texts([form]))[0]))
            except EncoderInputError:
                continue
    longest, vector = accepted[0]
    assert longest.startswith("star: keyword0, keyword1")
    store = open_store(None, settings.store_path)
    try:
        hits = store.search("emoji", vector, using=CAPTION_VECTOR, k=4)
    finally:
        store.close()
    assert [hit.payload["class_name"] for hit in hits] == ["star"] * 4
    assert all(hit.score == pytest.approx(1.0, abs=1e-4) for hit in hits)


async def test_styles_can_be_chosen_and_their_credits_follow(
    make_settings: MakeSettings, emoji_dir: Path
) -> None:
    settings = emoji_settings(make_settings, emoji_dir, emoji_styles="openmoji-line,google")
    source = open_source(settings)
    assert {item.payload["style"] for item in source.items} == {"google", "openmoji-line"}
    assert source.identity.endswith("[google,openmoji-line]")  # its own versions, never mixed
    assert "Twemoji" not in (source.attribution or "")
    assert "Noto Emoji" in (source.attribution or "")
    report = await run_index(settings)
    assert report.count == 12
    with pytest.raises(ValueError, match="choose from"):
        emoji_settings(make_settings, emoji_dir, emoji_styles="google,crayon")


async def test_a_missing_image_is_reported_with_its_id_and_skipped(
    make_settings: MakeSettings, emoji_dir: Path
) -> None:
    (emoji_dir / "images" / "twitter" / "2B50.png").unlink()
    report = await run_index(emoji_settings(make_settings, emoji_dir))
    assert report.count == 23
    missing = [bad for bad in report.errors if "2B50" in bad.relative_path]
    assert len(missing) == 1
    assert "twitter" in missing[0].relative_path
    assert missing[0].message == "missing"


async def test_bad_data_fails_the_run_when_configured(make_settings: MakeSettings, emoji_dir: Path) -> None:
    settings = emoji_settings(make_settings, emoji_dir, fail_on_bad_items=True)
    with pytest.raises(IndexerError, match=r"emoji\.csv:4"):
        await run_index(settings)
    store = open_store(None, settings.store_path)
    try:
        assert store.collection_info("emoji") is None
    finally:
        store.close()


def test_the_emoji_directory_falls_back_to_emoji_dir(
    monkeypatch: pytest.MonkeyPatch, emoji_dir: Path
) -> None:
    monkeypatch.setenv("EMOJI_DIR", str(emoji_dir))
    assert IndexerSettings(source="emoji").emoji_dir == emoji_dir
    monkeypatch.setenv("INDEXER_EMOJI_DIR", "/elsewhere")
    assert IndexerSettings(source="emoji").emoji_dir == Path("/elsewhere")


async def test_the_source_needs_a_directory(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMOJI_DIR", raising=False)
    with pytest.raises(IndexerError, match="EMOJI_DIR"):
        await run_index(make_settings(source="emoji", emoji_dir=None))


def test_one_caption_per_concept_and_an_id_per_image(make_settings: MakeSettings, emoji_dir: Path) -> None:
    source = open_source(emoji_settings(make_settings, emoji_dir))
    captions = {item.payload["class_name"]: item.caption for item in source.items}
    assert captions["star"] == "star: medium"
    assert len(captions) == 6
    assert np.unique([item.id for item in source.items]).size == 24
