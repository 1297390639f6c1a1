"""Text-tower distillation: a shallower student that loads through the real loader and follows its teacher."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.checkpoint import load_checkpoint
from clipsearch.embedder import Embedder
from training.__main__ import main as training_main
from training.distill import (
    DISTILLATION_FILE,
    Corpus,
    DistillConfig,
    DistillError,
    cosines,
    distill_text,
    kept_layers,
    shallow_copy,
    text_layers,
    vocabulary_words,
)
from training.models import COMPACT_CONFIGS, DIGIT_WORDS, build_compact
from training.queries import FREE_FORM_QUERIES, query_set


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's architecture in small: the pretrained 6-layer MiniLM text tower in a dual encoder."""
    directory = tmp_path_factory.mktemp("teacher") / "tiny-convnext"
    build_compact("tiny-convnext", seed=0).save(directory)
    return directory


@pytest.mark.parametrize(
    ("total", "keep", "expected"),
    [(6, 2, [0, 5]), (6, 3, [0, 2, 5]), (6, 1, [5]), (12, 4, [0, 4, 7, 11]), (2, 1, [1])],
)
def test_kept_layers_are_evenly_spaced_with_both_ends(total: int, keep: int, expected: list[int]) -> None:
    assert kept_layers(total, keep) == expected


@pytest.mark.parametrize("keep", [0, 6, 7])
def test_a_student_must_be_shallower_than_its_teacher(keep: int) -> None:
    with pytest.raises(DistillError, match="keep between 1 and 5"):
        kept_layers(6, keep)


def test_corpus_mentions_classes_in_words_numerals_and_plurals(teacher_dir: Path) -> None:
    tokenizer = load_checkpoint(teacher_dir, device="cpu").tokenizer
    corpus = Corpus(DIGIT_WORDS, vocabulary_words(tokenizer), [], seed=0)
    text = " ".join(corpus.batch(2000))
    for form in ("seven", "7", "sevens", "7s", "sixes"):
        assert f" {form} " in f" {text} ", form
    # The free-form evaluation phrasings are measured on, never trained on.
    free_form = [q for q, _, kind in query_set(DIGIT_WORDS, True) if kind == "free-form"]
    assert not set(free_form) & set(corpus.batch(2000))
    assert all(template not in {"{}", "{p}"} for template in FREE_FORM_QUERIES)


def test_corpus_draws_on_extra_lines(teacher_dir: Path) -> None:
    tokenizer = load_checkpoint(teacher_dir, device="cpu").tokenizer
    corpus = Corpus([], vocabulary_words(tokenizer), ["a dog on a beach"], seed=0)
    assert "a dog on a beach" in corpus.batch(50)


@pytest.mark.slow
def test_distilled_student_loads_through_the_real_loader_and_follows_its_teacher(
    teacher_dir: Path, tmp_path: Path
) -> None:
    teacher = load_checkpoint(teacher_dir, device="cpu")
    embedder = Embedder.from_checkpoint(teacher)
    free_form = [q for q, _, kind in query_set(DIGIT_WORDS, True) if kind == "free-form"]
    untrained = shallow_copy(teacher.model, kept_layers(6, 2)).eval()
    before = cosines(teacher.model, untrained, embedder, free_form)

    output = tmp_path / "student"
    result = distill_text(teacher, output, DistillConfig(layers=2, steps=40, batch_size=16, progress=False))

    assert result.kept_layers == [0, 5]
    assert result.teacher_layers == 6
    assert result.cosine_free_form_mean is not None
    assert result.cosine_free_form_mean > float(before.mean()) + 0.05, (before.mean(), result)
    student = load_checkpoint(output, device="cpu")
    assert len(text_layers(student.model)) == 2
    assert student.model.config.text_config.num_hidden_layers == 2
    assert student.meta.class_names == teacher.meta.class_names
    assert student.fingerprint != teacher.fingerprint
    # The images' side is the teacher's: vectors indexed with the teacher stay comparable.
    pixels = torch.rand(3, 3, 28, 28)
    np.testing.assert_allclose(
        Embedder.from_checkpoint(student).embed_pixel_values(pixels),
        embedder.embed_pixel_values(pixels),
        atol=1e-6,
    )
    # What the report says is what the saved student does.
    served = Embedder.from_checkpoint(student).embed_texts(free_form)
    np.testing.assert_allclose(
        float((served * embedder.embed_texts(free_form)).sum(axis=1).mean()),
        result.cosine_free_form_mean,
        atol=1e-4,
    )
    record = json.loads((output / DISTILLATION_FILE).read_text())
    assert record["teacher_fingerprint"] == teacher.fingerprint
    assert record["result"]["kept_layers"] == [0, 5]


@pytest.mark.slow
def test_cli_distils_and_reports(
    teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "student"
    code = training_main(
        [
            "distill-text",
            str(teacher_dir),
            "--output",
            str(output),
            "--layers",
            "3",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "text layers [0, 2, 5] of 6" in printed
    assert "free-form queries mean" in printed
    assert load_checkpoint(output, device="cpu").model.config.text_config.num_hidden_layers == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "6"], "keep between 1 and 5"),
        (["--corpus", "missing.txt"], "cannot read corpus"),
    ],
)
def test_cli_refuses_bad_settings_with_a_message(
    teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    code = training_main(["distill-text", str(teacher_dir), "--output", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_missing_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = training_main(["distill-text", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_a_clip_text_tower_distils_too(tmp_path: Path) -> None:
    """CLIP's own text transformer (`encoder.layers`, EOS pooling) as well as BERT's."""
    config = replace(COMPACT_CONFIGS["tiny"], text_layers=3)
    build_compact(config, seed=0).save(tmp_path / "teacher")
    teacher = load_checkpoint(tmp_path / "teacher", device="cpu")
    result = distill_text(teacher, tmp_path / "student", DistillConfig(steps=3, batch_size=4, progress=False))
    assert result.kept_layers == [0, 2]
    student = load_checkpoint(tmp_path / "student", device="cpu")
    assert len(text_layers(student.model)) == 2
    vectors = Embedder.from_checkpoint(student).embed_texts(["seven", "the number 3"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_single_layer_text_tower_has_nothing_to_drop(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="keep between"):
        distill_text(load_checkpoint(tiny_checkpoint, device="cpu"), tmp_path / "out", DistillConfig(steps=1))
