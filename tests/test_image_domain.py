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
    looks_like_mnist,
    to_model_domain,
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
    assert set(DOMAIN_TESTS) == set(SketchNormalization)


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
