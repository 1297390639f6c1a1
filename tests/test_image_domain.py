"""Image queries brought into the model's domain (clipsearch.preprocess: domain tests, to_model_domain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from clipsearch.datasets import load_mnist
from clipsearch.preprocess import (
    DOMAIN_TESTS,
    SketchNormalization,
    in_domain,
    looks_like_line_art,
    looks_like_mnist,
    to_model_domain,
    to_rgb_on_white,
)


def mnist_like(size: int = 28) -> Image.Image:
    """A synthetic MNIST digit: a white "0" whose box is 20/28 of the side, centred, on black."""
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).ellipse((9, 4, 19, 24), outline=255, width=3)
    return image.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def printed_digit(text: str = "4", ink: str = "black", paper: str = "white") -> Image.Image:
    """A digit as a printer puts it on paper: 280x280, a large glyph of the default font."""
    page = Image.new("RGB", (280, 280), paper)
    font = ImageFont.load_default(size=180)
    ImageDraw.Draw(page).text((80, 30), text, font=font, fill=ink)
    return page


def filling_its_frame(image: Image.Image, margin: int = 4) -> Image.Image:
    """The picture cropped to its ink, a few pixels around: a digit photographed close up."""
    left, top, right, bottom = image.convert("L").getbbox() or (0, 0, *image.size)
    return image.crop((left - margin, top - margin, right + margin, bottom + margin))


def test_every_normalisation_has_a_domain_test() -> None:
    assert {mode.value for mode in SketchNormalization} <= set(DOMAIN_TESTS)


@pytest.mark.parametrize("size", [28, 56, 280])
def test_an_mnist_like_digit_is_in_the_mnist_domain_at_any_size(size: int) -> None:
    assert looks_like_mnist(mnist_like(size))


def test_real_mnist_test_images_are_in_the_mnist_domain(mnist_dir: Path) -> None:
    images = load_mnist(mnist_dir, "test").images[:300]
    assert all(looks_like_mnist(Image.fromarray(a, mode="L").convert("RGB")) for a in images)


@pytest.mark.parametrize(
    ("case", "picture"),
    [
        ("black on white", lambda: printed_digit()),
        ("dark on grey paper", lambda: printed_digit(ink="#202020", paper="#d8d8d0")),
        ("colour", lambda: printed_digit(ink="red", paper="black")),
        ("fills its frame", lambda: filling_its_frame(printed_digit("8", ink="white", paper="black"))),
        ("off centre", lambda: Image.fromarray(np.roll(np.asarray(mnist_like(28)), 8, axis=1))),
        ("blank black", lambda: Image.new("RGB", (28, 28), "black")),
    ],
)
def test_pictures_unlike_mnist_are_not_in_its_domain(case: str, picture: object) -> None:
    assert callable(picture)
    assert not looks_like_mnist(picture())


def test_in_domain_image_is_returned_as_it_is() -> None:
    image = mnist_like(28)
    kept, applied = to_model_domain(image, SketchNormalization.MNIST)
    assert applied is SketchNormalization.NONE
    assert kept is image


def test_a_printed_digit_gets_the_mnist_normalisation() -> None:
    normalised, applied = to_model_domain(printed_digit(), SketchNormalization.MNIST)
    assert applied is SketchNormalization.MNIST
    assert normalised.size == (28, 28)
    pixels = np.asarray(normalised.convert("L"))
    assert pixels[0].max() == 0  # white ink on black, the border clear
    assert pixels.max() == 255
    assert looks_like_mnist(normalised)  # the normalisation lands in the domain it was tested for


def test_a_model_without_a_sketch_normalisation_takes_every_picture_as_it_is() -> None:
    image = printed_digit()
    assert in_domain(image, SketchNormalization.NONE)
    kept, applied = to_model_domain(image, SketchNormalization.NONE)
    assert (kept, applied) == (image, SketchNormalization.NONE)


def test_a_blank_page_is_kept_as_it_is_rather_than_refused() -> None:
    page = Image.new("RGB", (100, 100), "white")
    kept, applied = to_model_domain(page, SketchNormalization.MNIST)
    assert (kept, applied) == (page, SketchNormalization.NONE)


# The line-art domain (emoji models): colour pictures and clean line art stay, drawings on paper do not.


def emoji_face() -> Image.Image:
    """A colour emoji as the collection has them: a yellow face on a transparent 64x64 canvas."""
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 60, 60), fill=(255, 204, 77, 255), outline=(200, 140, 0, 255), width=2)
    draw.ellipse((20, 22, 26, 30), fill=(60, 40, 20, 255))
    draw.ellipse((38, 22, 44, 30), fill=(60, 40, 20, 255))
    return to_rgb_on_white(image)


def line_art(size: int = 72, stroke: int = 2) -> Image.Image:
    """OpenMoji-like line art: black strokes of about 2 px in 72, a 56 px box, centred, on white."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    scale = size / 72
    draw.ellipse(tuple(round(v * scale) for v in (8, 8, 64, 64)), outline=0, width=round(stroke * scale))
    draw.line(tuple(round(v * scale) for v in (24, 44, 48, 44)), fill=0, width=round(stroke * scale))
    return image.convert("RGB")


def drawing_on_paper(seed: int = 0) -> Image.Image:
    """The same drawing with a pen on paper, photographed: off-white, slightly noisy, 280x280."""
    ink = 255 - np.asarray(line_art(280, stroke=3).convert("L"), dtype=np.float64)
    rng = np.random.default_rng(seed)
    page = 228 - ink / 255 * 190 + rng.normal(0, 3, ink.shape)
    return Image.fromarray(page.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")


def solid_shape() -> Image.Image:
    """A grey emoji: a filled dark disc on white."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((4, 4, 60, 60), fill=(40, 40, 40))
    return image


@pytest.mark.parametrize(
    ("case", "picture", "expected"),
    [
        ("colour emoji", emoji_face, True),
        ("line art", line_art, True),
        ("line art, larger", lambda: line_art(288), True),
        ("solid grey shape", solid_shape, True),
        ("drawing on paper", drawing_on_paper, False),
        ("thick marker on white", lambda: line_art(280, stroke=6), False),
    ],
)
def test_line_art_domain(case: str, picture: object, expected: bool) -> None:
    assert callable(picture)
    assert looks_like_line_art(picture()) is expected
