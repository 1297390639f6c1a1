"""bench/quality.py works: canvas-like sketches, and one run of the whole machinery on the tiny model.

No quality numbers are asserted here (a random tiny model); `python -m bench.quality`
on the trained checkpoint measures them.
"""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import quality
from bench.sketches import CANVAS_PX, STYLES, draw_digit
from clipsearch.preprocess import MNIST_SIZE, SketchNormalization, decode_sketch
from tests.gateway.conftest import REPO_ROOT


@pytest.mark.parametrize("digit", range(10))
def test_every_style_of_every_digit_is_a_canvas_png_the_mnist_normalisation_accepts(digit: int) -> None:
    rng = random.Random(digit)
    for _ in range(3 * len(STYLES[digit])):
        transparent = rng.random() < 0.5
        sketch = draw_digit(digit, rng, transparent=transparent)
        drawn = Image.open(io.BytesIO(sketch.png))
        assert drawn.size == (CANVAS_PX, CANVAS_PX)
        assert (drawn.mode == "RGBA") is transparent
        assert 8 <= sketch.stroke_px <= 24
        seen = decode_sketch(sketch.png, SketchNormalization.MNIST)
        assert seen.size == (MNIST_SIZE, MNIST_SIZE)
        assert int(np.asarray(seen).max()) == 255  # strokes survived normalisation


def test_text_queries_ask_every_digit_by_name_numeral_and_free_form() -> None:
    queries = quality.text_queries()
    for digit in range(10):
        mine = [query for query in queries if query.digit == digit]
        assert {query.kind for query in mine} == {"name", "numeral", "free-form"}
        assert any(query.text == str(digit) for query in mine)
        assert any(query.text == quality.WORDS[digit] for query in mine)
    assert "show me sixes" in {query.text for query in queries}


@pytest.mark.slow
def test_quality_run_on_the_tiny_model_prints_the_table_and_saves_the_sheets(
    tiny_checkpoint: Path,
    mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the services start as `python -m services.<name>`
    args = quality.parse_args(
        [
            "--checkpoint", str(tiny_checkpoint),
            "--mnist-dir", str(mnist_dir),
            "--limit", "60",
            "--variants", "1",
            "--sheets-dir", str(tmp_path),
            "--encoder-threads", "1",
        ]
    )  # fmt: skip
    assert asyncio.run(quality.run(args)) == 0
    output = capsys.readouterr().out
    table = output[output.index("precision@10 through the HTTP API") :].splitlines()
    assert table[1].split() == ["digit", "name", "numeral", "free-form", "sketch"]
    assert [row.split()[0] for row in table[2:13]] == [*map(str, range(10)), "overall"]
    assert "60 indexed" in output
    for sheet in ("quality-sketches.png", "quality-results.png"):
        with Image.open(tmp_path / sheet) as image:
            assert image.format == "PNG"
