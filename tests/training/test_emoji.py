"""Emoji: the reader (bad data named and skipped, or strict), the upstream build, the CSV export,
the training data, and a tiny end-to-end train + evaluate on a generated emoji-layout directory."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from clipsearch.datasets import (
    EMOJI_PACKAGES,
    DatasetError,
    NpmPackage,
    download_emoji,
    export_caption_csv,
    heldout_concepts,
    read_emoji,
)
from training.__main__ import main as train_main
from training.config import AugmentConfig, DataConfig
from training.data import caption_pairs, load_pairs, normalisation
from training.emoji import cross_style_batches, drawing_augment
from training.evaluate import main as evaluate_main
from training.models import COMPACT_CONFIGS, image_processor_for

from .conftest import EMOJI_CONCEPTS, emoji_picture

PROCESSOR: Any = image_processor_for(COMPACT_CONFIGS["tiny-emoji"])


def test_reader_gives_every_field_and_names_the_bad_row(
    emoji_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collection = read_emoji(emoji_dir)
    assert [c.label for c in collection.concepts] == [c[2] for c in EMOJI_CONCEPTS]
    assert len(collection.items) == 4 * len(EMOJI_CONCEPTS)
    star = next(item for item in collection.items if item.id == "2B50" and item.style == "openmoji-line")
    assert (star.emoji, star.label, star.tags, star.group, star.subgroup) == (
        "⭐",
        "star",
        ("medium", "star"),
        "travel & places",
        "sky & weather",
    )
    assert star.image_path == emoji_dir / "images" / "openmoji-line" / "2B50.png"
    assert len(collection.problems) == 1
    assert "emoji.csv:4:" in collection.problems[0]
    assert "skipping" in caplog.text


def test_missing_and_unreadable_images_are_named_by_id(emoji_dir: Path) -> None:
    (emoji_dir / "images" / "twitter" / "1F534.png").unlink()
    (emoji_dir / "images" / "google" / "2B50.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    collection = read_emoji(emoji_dir)
    assert len(collection.items) == 4 * len(EMOJI_CONCEPTS) - 2
    joined = "\n".join(collection.problems)
    assert "images/twitter/1F534.png (id 1F534, twitter): missing" in joined
    assert "images/google/2B50.png (id 2B50, google): unreadable" in joined
    with pytest.raises(DatasetError, match=r"emoji\.csv:4:"):
        read_emoji(emoji_dir, strict=True)


def test_styles_can_be_chosen_and_unknown_ones_are_refused(emoji_dir: Path) -> None:
    collection = read_emoji(emoji_dir, styles=["openmoji-line"])
    assert {item.style for item in collection.items} == {"openmoji-line"}
    with pytest.raises(DatasetError, match="unknown emoji style"):
        read_emoji(emoji_dir, styles=["apple"])
    with pytest.raises(DatasetError, match=r"emoji\.csv not found"):
        read_emoji(emoji_dir / "nowhere")


def test_heldout_concepts_are_seeded_and_order_free() -> None:
    ids = [f"1F{n:03X}" for n in range(200)]
    held = heldout_concepts(ids, 0.15, seed=0)
    assert len(held) == 30
    assert held == heldout_concepts(list(reversed(ids)), 0.15, seed=0)
    assert held != heldout_concepts(ids, 0.15, seed=1)
    assert heldout_concepts(ids, 0.0, seed=0) == set()


def _npm_tarball(path: Path, files: dict[str, bytes]) -> NpmPackage:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    digest = base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    name, version = path.name.removesuffix(".tgz").rsplit("-", 1)
    return NpmPackage(name, version, f"sha512-{digest}")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="20" {}/></svg>'


def _registry(root: Path) -> dict[str, NpmPackage]:
    """Upstream-shaped npm tarballs (two emoji, one component that is left out) in a file:// registry."""
    emoji = [("1F534", "🔴", "red circle", ["circle", "red"]), ("2B50", "⭐", "star", ["star"])]
    data = [
        {"label": label, "hexcode": h, "emoji": e, "tags": tags, "group": 0, "subgroup": 0, "order": i}
        for i, (h, e, label, tags) in enumerate(emoji)
    ] + [
        {"label": "light skin tone", "hexcode": "1F3FB", "emoji": "🏻", "group": 2, "subgroup": 1, "order": 9}
    ]
    messages = {
        "groups": [{"key": "symbols", "message": "symbols", "order": 0}],
        "subgroups": [{"key": "geometric", "message": "geometric", "order": 0}],
    }
    names: dict[str, bytes] = {"en/data.json": json.dumps(data).encode(), "LICENSE": b"MIT\n"}
    names["en/messages.json"] = json.dumps(messages).encode()
    for language in ("de", "es", "fr", "it", "ja", "pt", "ru", "zh"):
        names[f"{language}/data.json"] = json.dumps(
            [{"hexcode": h, "label": f"{language}:{lab}"} for h, _, lab, _ in emoji]
        ).encode()
    packages = {}
    for style in ("google", "twitter"):
        files = {
            "emoji.json": json.dumps(
                [{"unified": h, "image": f"{h.lower()}.png", f"has_img_{style}": True} for h, *_ in emoji]
                + [{"unified": "1F3FB", "image": "1f3fb.png", f"has_img_{style}": True}]
            ).encode(),
            "LICENSE": b"MIT\n",
            "README.md": b"* Android/Google/Noto images, Apache.\n* Twitter images, CC-BY.\n",
        }
        for h, *_ in [*emoji, ("1F3FB",)]:
            files[f"img/{style}/64/{h.lower()}.png"] = _png(emoji_picture("circle", (200, 0, 0), style))
        key = style
        folder = root / f"emoji-datasource-{style}" / "-"
        folder.mkdir(parents=True)
        packages[key] = _npm_tarball(folder / f"emoji-datasource-{style}-16.0.0.tgz", files)
    openmoji = {"LICENSE.txt": b"CC-BY-SA-4.0\n"}
    for h, *_ in emoji:
        openmoji[f"color/svg/{h}.svg"] = SVG.format('fill="#d22" stroke="#000" stroke-width="2"').encode()
        openmoji[f"black/svg/{h}.svg"] = SVG.format('fill="none" stroke="#000" stroke-width="2"').encode()
    (root / "openmoji" / "-").mkdir(parents=True)
    packages["openmoji"] = _npm_tarball(root / "openmoji" / "-" / "openmoji-17.0.0.tgz", openmoji)
    (root / "emojibase-data" / "-").mkdir(parents=True)
    packages["names"] = _npm_tarball(root / "emojibase-data" / "-" / "emojibase-data-17.0.0.tgz", names)
    return packages


def test_download_builds_the_layout_from_verified_tarballs(tmp_path: Path) -> None:
    pytest.importorskip("cairosvg", reason="cairosvg (training extra) renders OpenMoji's SVGs")
    packages = _registry(tmp_path / "registry")
    registry = (tmp_path / "registry").as_uri() + "/"
    download_emoji(tmp_path / "emoji", registry=registry, packages=packages)
    collection = read_emoji(tmp_path / "emoji")
    assert [c.id for c in collection.concepts] == ["1F534", "2B50"]  # the component is left out
    assert collection.problems == []
    assert collection.concepts[0].tags == ("circle", "red")
    assert Image.open(tmp_path / "emoji" / "images" / "openmoji" / "2B50.png").size == (72, 72)
    row = (tmp_path / "emoji" / "emoji.csv").read_text(encoding="utf-8").splitlines()[1]
    assert row == "1F534,🔴,red circle,circle|red,symbols,geometric," + ",".join(
        f"{language}:red circle" for language in ("de", "es", "fr", "it", "ja", "pt", "ru", "zh")
    )
    # A tarball that does not match its pinned integrity is refused, never used.
    tampered = {
        **packages,
        "openmoji": NpmPackage("openmoji", "17.0.0", EMOJI_PACKAGES["openmoji"].integrity),
    }
    with pytest.raises(DatasetError, match="pinned integrity"):
        download_emoji(tmp_path / "other", registry=registry, packages=tampered)


def test_export_csv_reads_back_through_the_generic_caption_path(emoji_dir: Path, tmp_path: Path) -> None:
    collection = read_emoji(emoji_dir, styles=["google", "twitter", "openmoji"])
    csv_path = tmp_path / "out" / "emoji.csv"
    assert export_caption_csv(collection, csv_path) == 18
    data = caption_pairs(csv_path, PROCESSOR)
    assert data.skipped == []
    assert data.captions is not None
    assert data.captions[:3] == ["red circle"] * 3
    assert data.labels is not None
    assert len(data.class_names) == len(EMOJI_CONCEPTS)  # the concept id: label-aware training works


def test_emoji_pairs_hold_out_concepts_and_sample_keyword_captions(emoji_dir: Path) -> None:
    config = DataConfig(kind="emoji", emoji_dir=emoji_dir, holdout_fraction=0.34, holdout_seed=0)
    data = load_pairs(config, PROCESSOR)
    held = heldout_concepts([c[0] for c in EMOJI_CONCEPTS], 0.34, 0)
    assert len(held) == 2
    assert len(data.class_names) == len(EMOJI_CONCEPTS) - 2
    assert len(data) == 4 * len(data.class_names)
    assert data.class_captions is not None
    star = data.class_names.index("star") if "star" in data.class_names else None
    if star is not None:
        assert {"star", "an emoji of star", "medium"} <= set(data.class_captions[star])
    assert data.white_background
    assert data.styles is not None
    # The line art went through the line-art normalisation: black strokes on white, cropped.
    line = data.styles.index("openmoji-line")
    mean, std = normalisation(PROCESSOR)
    pixels = data.pixels[line : line + 1] * std + mean
    assert float(pixels.max()) > 0.99
    assert float(pixels.min()) < 0.2


def test_cross_style_batches_pair_two_styles_of_each_concept(emoji_dir: Path) -> None:
    data = load_pairs(DataConfig(kind="emoji", emoji_dir=emoji_dir), PROCESSOR)
    assert data.labels is not None
    assert data.styles is not None
    batches = cross_style_batches(data.labels, data.styles, 4, 5, torch.Generator().manual_seed(0), 1.0)
    assert len(batches) == 5
    for first, second in batches:
        assert torch.equal(data.labels[first], data.labels[second])
        assert len(set(data.labels[first].tolist())) == len(first) == 4
        assert all(data.styles[int(a)] != data.styles[int(b)] for a, b in zip(first, second, strict=True))
        # line_art_share 1: one of each pair is the line art
        assert all(
            "openmoji-line" in (data.styles[int(a)], data.styles[int(b)])
            for a, b in zip(first, second, strict=True)
        )


def test_drawing_augmentation_keeps_white_white(emoji_dir: Path) -> None:
    data = load_pairs(DataConfig(kind="emoji", emoji_dir=emoji_dir), PROCESSOR)
    assert data.styles is not None
    mean, std = normalisation(PROCESSOR)
    config = AugmentConfig(max_hue_deg=90, saturation=0.5, strength=0.4, greyscale_share=0.3, stroke=True)
    line = torch.tensor([style == "openmoji-line" for style in data.styles])
    moved = drawing_augment(data.pixels, line, config, torch.Generator().manual_seed(0), mean, std)
    assert not torch.allclose(moved, data.pixels)
    # White stays white (strokes may spread only into their own 3x3 neighbourhood).
    white = ((data.pixels * std + mean) > 0.999).all(dim=1, keepdim=True).float()
    white = (-torch.nn.functional.max_pool2d(-white, 3, stride=1, padding=1))[:, 0].bool()  # (n, H, W)
    rgb = moved * std + mean
    assert torch.allclose(rgb.permute(0, 2, 3, 1)[white], torch.ones(1, 3), atol=1e-4)


@pytest.mark.slow
def test_tiny_emoji_train_and_evaluate_end_to_end(emoji_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "emoji-tiny"
    code = train_main(
        [
            "train",
            "--model",
            "tiny-emoji",
            "--output",
            str(output),
            "--emoji-dir",
            str(emoji_dir),
            "--emoji-styles",
            "google,openmoji,openmoji-line",
            "--holdout-fraction",
            "0.34",
            "--cross-style-weight",
            "1.0",
            "--freeze",
            "lock-text",
            "--epochs",
            "3",
            "--batch-size",
            "6",
            "--warmup-steps",
            "2",
            "--val-fraction",
            "0",
            "--threads",
            "1",
            "--save-init",
            "--no-progress",
        ]
    )
    assert code == 0
    init = output.with_name("emoji-tiny-init")
    assert (init / "model.safetensors").is_file()
    assert evaluate_main([str(output), "--baseline", str(init), "--emoji-dir", str(emoji_dir)]) == 0
    report = json.loads((output / "eval" / "metrics.json").read_text())
    emoji = report["checkpoint"]["emoji"]
    assert emoji["split"]["heldout_concepts"] == 2
    assert emoji["split"]["trained_styles"] == ["google", "openmoji", "openmoji-line"]
    assert set(emoji["unseen_concepts"]["text_to_image"]) >= {"R@1", "R@5", "R@10"}
    twitter = emoji["unseen_style"]["twitter"]["seen_concepts"]
    assert set(twitter) == {"image_to_image", "image_to_caption"}
    assert 0.0 <= emoji["line_art_to_colour"]["all"]["R@10"] <= 1.0
    assert "R@10" in emoji["label_to_image"]
    assert any("emoji.csv:4:" in problem for problem in report["checkpoint"]["skipped"])
    assert (
        report["baseline"]["emoji"]["split"] == emoji["split"]
    )  # the baseline is measured on the same split
    assert set(report["pictures"]) == {
        "text_query_grid.png",
        "line_art_to_colour_grid.png",
        "drawing_grid.png",
        "embedding_map.png",
    }
    assert emoji["drawn_sketches"]["queries"] == 3  # the star, drawn with three pens: the one shape it has
    for picture in report["pictures"]:
        assert (output / "eval" / picture).stat().st_size > 1000
    card = (output / "README.md").read_text()
    assert "unseen style (twitter): top-1 concept" in card
    assert "line-art" in card


def test_strict_training_fails_with_the_bad_line_not_a_traceback(
    emoji_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--model", "tiny-emoji", "--output", str(tmp_path / "x"), "--emoji-dir", str(emoji_dir)]
    assert train_main([*args, "--strict", "--no-progress"]) == 2
    assert "emoji.csv:4:" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_collection_reads_whole(emoji_data_dir: Path) -> None:
    collection = read_emoji(emoji_data_dir)
    assert len(collection.concepts) == 1906
    assert len(collection.items) == 4 * 1906
    assert collection.problems == []
    assert len({c.label for c in collection.concepts}) == 1906
    pizza = next(c for c in collection.concepts if c.id == "1F355")
    assert (pizza.label, pizza.group) == ("pizza", "food & drink")
    assert "cheese" in pizza.tags
