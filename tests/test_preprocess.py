"""Image decoding and sketch normalisation (clipsearch.preprocess)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from clipsearch.preprocess import (
    LINE_ART_BOX,
    LINE_ART_SIZE,
    LINE_ART_STROKE_PX,
    ImageInputError,
    SketchNormalization,
    _stroke_width,
    decode_image,
    decode_sketch,
    in_domain,
    to_model_domain,
    to_rgb_on_white,
)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def draw_seven(size: int = 280, width: int = 20, transparent: bool = False, offset: int = 0) -> bytes:
    mode, background = ("RGBA", (0, 0, 0, 0)) if transparent else ("RGB", (255, 255, 255))
    image = Image.new(mode, (size, size), background)
    s = size / 280
    points = [(60 * s + offset, 40 * s), (200 * s + offset, 40 * s), (120 * s + offset, 250 * s)]
    ImageDraw.Draw(image).line(points, fill=(0, 0, 0, 255), width=width)
    return encode(image)


def centre_of_mass(image: Image.Image) -> tuple[float, float]:
    ink = np.asarray(image.convert("L"), dtype=np.float64)
    ys, xs = np.indices(ink.shape)
    return float((ys * ink).sum() / ink.sum()), float((xs * ink).sum() / ink.sum())


@pytest.mark.parametrize(
    ("size", "width", "transparent", "offset"),
    [(280, 20, False, 0), (280, 20, True, 0), (280, 3, False, 0), (600, 60, True, 150), (100, 1, False, -20)],
)
def test_mnist_sketch_is_centred_white_on_black(
    size: int, width: int, transparent: bool, offset: int
) -> None:
    out = decode_sketch(draw_seven(size, width, transparent, offset), SketchNormalization.MNIST)
    assert out.size == (28, 28)
    ink = np.asarray(out.convert("L"))
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1.0
    assert abs(cx - 14) <= 1.0
    rows, cols = np.nonzero(ink > 64)
    # the longer side of the ink box is about 20 px, as in MNIST
    assert 18 <= max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 23
    # background is black and strokes are white
    assert ink[0].max() == 0
    assert ink.max() == 255
    # strokes neither vanish (thin pen) nor fill the box (thick pen)
    assert 40 <= (ink > 128).sum() <= 160


def test_white_on_black_sketch_keeps_polarity() -> None:
    image = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(image).ellipse((50, 30, 150, 170), outline=255, width=12)
    out = np.asarray(decode_sketch(encode(image), SketchNormalization.MNIST).convert("L"))
    assert out[0].max() == 0
    assert out[14, 14] < 64  # the hole of the zero stays dark


def test_empty_sketch_is_rejected() -> None:
    with pytest.raises(ImageInputError, match="empty"):
        decode_sketch(encode(Image.new("RGB", (280, 280), "white")), SketchNormalization.MNIST)


def test_sketch_without_normalisation_is_the_drawing() -> None:
    out = decode_sketch(draw_seven(transparent=True), SketchNormalization.NONE)
    assert out.size == (280, 280)
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(encode(image)).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    assert decode_image(encode(la)).getpixel((1, 1)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert decode_image(encode(palette)).getpixel((2, 2)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(encode(image, "JPEG", exif=exif))
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "L", "1", "F"])
def test_unusual_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in {"CMYK", "F"} else "PNG"
    out = decode_image(encode(Image.new(mode, (8, 8)), fmt))
    assert out.mode == "RGB"
    assert out.size == (8, 8)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", encode(Image.new("RGB", (32, 32)))[:40], b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
)
def test_undecodable_bytes_raise_image_input_error(data: bytes) -> None:
    with pytest.raises(ImageInputError):
        decode_image(data)


def test_pixel_cap_is_checked_before_decoding() -> None:
    big = encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageInputError, match="limit"):
        decode_image(big, max_pixels=1_000_000)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue()).getpixel((5, 5))[0] > 200


def draw_bell(size: int, pen: int, transparent: bool, ink: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A bell outline as a canvas sends it: `pen` px strokes on white or on a transparent canvas."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    s = size / 100
    draw.arc((25 * s, 15 * s, 75 * s, 75 * s), 180, 360, fill=(*ink, 255), width=pen)
    draw.line((25 * s, 45 * s, 20 * s, 80 * s), fill=(*ink, 255), width=pen)
    draw.line((75 * s, 45 * s, 80 * s, 80 * s), fill=(*ink, 255), width=pen)
    draw.line((15 * s, 80 * s, 85 * s, 80 * s), fill=(*ink, 255), width=pen)
    draw.ellipse((45 * s, 82 * s, 55 * s, 92 * s), outline=(*ink, 255), width=pen)
    return encode(image)


def strokes(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")) < 128


@pytest.mark.parametrize(
    ("size", "pen", "transparent", "ink"),
    [
        (280, 2, True, (0, 0, 0)),  # a thin pen on a transparent canvas
        (280, 24, True, (0, 0, 0)),  # a marker
        (600, 6, False, (0, 0, 0)),  # a big white canvas, fine pen
        (150, 10, False, (200, 30, 30)),  # a small canvas, a red pen
    ],
)
def test_line_art_sketch_looks_like_the_line_art(
    size: int, pen: int, transparent: bool, ink: tuple[int, int, int]
) -> None:
    image = decode_sketch(draw_bell(size, pen, transparent, ink), SketchNormalization.LINE_ART)
    assert image.mode == "RGB"
    assert image.size == (LINE_ART_SIZE, LINE_ART_SIZE)
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all()  # black on white, whatever the pen's colour
    assert pixels.max() == 255
    assert pixels.min() < 40
    mask = strokes(image)
    rows, cols = np.nonzero(mask)
    longer = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    assert abs(longer - LINE_ART_BOX) <= 2
    assert abs((rows.max() + rows.min()) / 2 - (LINE_ART_SIZE - 1) / 2) <= 2  # centred
    assert abs((cols.max() + cols.min()) / 2 - (LINE_ART_SIZE - 1) / 2) <= 2
    assert abs(_stroke_width(mask) - LINE_ART_STROKE_PX) <= 0.75


def test_line_art_sketches_of_one_shape_agree_whatever_the_pen() -> None:
    thin = strokes(decode_sketch(draw_bell(280, 2, True), SketchNormalization.LINE_ART))
    thick = strokes(decode_sketch(draw_bell(280, 24, False), SketchNormalization.LINE_ART))
    near = np.asarray(
        Image.fromarray(thin.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5)), dtype=bool
    )
    assert (thick & near).sum() / thick.sum() > 0.8


def test_line_art_of_the_collection_is_kept_as_it_is() -> None:
    # Line art already at the measured width and box (black on transparent, 72x72) stays where it is.
    art = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    ImageDraw.Draw(art).ellipse((8, 8, 63, 63), outline=(0, 0, 0, 255), width=2)
    normalised = decode_sketch(encode(art), SketchNormalization.LINE_ART)
    original = strokes(to_rgb_on_white(art))
    assert (strokes(normalised) & original).sum() / original.sum() > 0.85


def test_line_art_domain_keeps_colour_pictures_and_framed_line_art() -> None:
    colour = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(colour).ellipse((8, 8, 56, 56), fill=(240, 190, 40), outline=(120, 60, 0))
    assert in_domain(colour, SketchNormalization.LINE_ART)  # a colour emoji: the model's own kind
    framed = decode_sketch(draw_bell(280, 6, True), SketchNormalization.LINE_ART)
    assert in_domain(framed, SketchNormalization.LINE_ART)  # already line art: left as it is
    paper = Image.new("RGB", (400, 400), (225, 225, 215))
    ImageDraw.Draw(paper).ellipse((20, 20, 140, 140), outline=(40, 40, 40), width=5)  # small, in a corner
    assert not in_domain(paper, SketchNormalization.LINE_ART)
    image, applied = to_model_domain(paper, SketchNormalization.LINE_ART)
    assert applied is SketchNormalization.LINE_ART
    assert image.size == (LINE_ART_SIZE, LINE_ART_SIZE)
    assert not in_domain(Image.new("RGB", (50, 50), "black"), SketchNormalization.LINE_ART)
