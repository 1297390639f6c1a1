"""Image and sketch preprocessing: the one path from bytes to model input.

The encoder service, training and evaluation all call this module, so an image
is turned into pixels the same way wherever it is embedded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from clipsearch.image_limits import (
    DEFAULT_MAX_DECODED_BYTES,
    FORMAT_NAMES,
    ImageLimitError,
    load_shrunk,
    open_checked,
)

if TYPE_CHECKING:  # annotations only: the indexer imports this module and must not need torch
    import torch

# A 40-megapixel image is already far more than a CLIP model can use; refusing
# larger ones before decoding keeps a hostile upload from eating the memory (so does
# the budget for decoded bytes, clipsearch.image_limits, which in RGB is reached first).
DEFAULT_MAX_PIXELS = 40_000_000
# The image processor scales the shorter side up to the model's size, so a
# 1x60000 strip (a few hundred bytes) would become gigabytes of pixels.
MAX_ASPECT_RATIO = 100

MNIST_SIZE = 28
MNIST_BOX = 20  # MNIST digits were scaled so the longer side is 20 px
MNIST_STROKE_PX = 2.5  # typical stroke width of an MNIST digit, in 28x28 pixels
_WORK_BOX = 160  # sketches are brought to at most this size before stroke filtering
# OpenMoji's black line art, measured over its 1,906 images (72x72): strokes 2.25 px wide (median;
# 2.0-2.5 from the 10th to the 90th percentile), ink box 56 px on its longer side (48-64), centred.
LINE_ART_SIZE = 72
LINE_ART_BOX = 56
LINE_ART_STROKE_PX = 2.25


class ImageInputError(ValueError):
    """The caller's image or sketch cannot be used; the message says why."""


class SketchNormalization(StrEnum):
    """How a canvas drawing is brought into the domain the model was trained on."""

    NONE = "none"  # use the drawing as an ordinary image, black on white
    MNIST = "mnist"  # white on black, cropped, 20 px box, centred by mass in 28x28
    LINE_ART = "line-art"  # black on white like OpenMoji's line art: 56 px box, 2.25 px strokes, in 72x72


class ImageProcessor(Protocol):
    """The part of a Hugging Face image processor this module uses."""

    def __call__(self, images: list[Image.Image], return_tensors: str) -> dict[str, torch.Tensor]: ...


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> Image.Image:
    """Decode PNG/JPEG/WebP/GIF/BMP/TIFF bytes into an upright RGB image on white.

    EXIF orientation is applied, transparency is composited onto white, and
    animated images give their first frame. The size is checked from the header before
    anything is decoded, and an image larger than a model needs comes back shrunk
    (clipsearch.image_limits). Raises ImageInputError with a message fit for the caller
    on anything that is not a usable image.
    """
    if not data:
        raise ImageInputError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = open_checked(
                data,
                max_pixels=max_pixels,
                max_aspect_ratio=MAX_ASPECT_RATIO,
                max_decoded_bytes=max_decoded_bytes,
            )
            image = load_shrunk(opened)
    except ImageLimitError as exc:
        raise ImageInputError(str(exc)) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"not a recognised image format (expected {FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        raise ImageInputError(f"image could not be decoded: {exc}") from None
    return to_rgb_on_white(image)


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels become white."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        image = _high_depth_to_l(image)
    has_alpha = image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = array / 257.0
    else:
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.nan_to_num(scaled).clip(0, 255).astype(np.uint8), mode="L")


def normalize_sketch(drawing: Image.Image, mode: SketchNormalization) -> Image.Image:
    """Bring a decoded canvas drawing (RGB, any size) into the model's domain.

    Dark strokes on a light background and light strokes on a dark one are both
    accepted; the background is told from the border of the drawing.
    """
    if mode is SketchNormalization.NONE:
        return drawing.convert("RGB")
    if mode is SketchNormalization.MNIST:
        return _mnist_normalize(drawing)
    if mode is SketchNormalization.LINE_ART:
        return _line_art_normalize(drawing)
    raise ValueError(f"unknown sketch normalisation {mode!r}")


def _ink(drawing: Image.Image) -> np.ndarray:
    """Ink intensity in 0..255 (strokes high, background 0), whatever the polarity."""
    gray = np.asarray(drawing.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = gray if float(np.median(border)) < 128 else 255.0 - gray
    background = float(np.median(np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])))
    return np.clip(ink - background, 0, 255)


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask: area over half the boundary length."""
    area = float(mask.sum())
    padded = np.pad(mask, 1)
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    boundary = max(area - float(interior.sum()), 1.0)
    return max(2.0 * area / boundary, 1.0)


def _cropped_ink(drawing: Image.Image) -> tuple[Image.Image, float]:
    """The ink (strokes white on black, 0..255) cropped to its box and bounded to the work size."""
    ink = _ink(drawing)
    peak = float(ink.max())
    if peak < 16:
        raise ImageInputError("sketch is empty: no strokes found")
    rows, cols = np.nonzero(ink > peak * 0.25)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = Image.fromarray((ink[top:bottom, left:right] * (255.0 / peak)).astype(np.uint8), mode="L")
    if max(crop.size) > _WORK_BOX:  # bound the cost of the stroke filters below
        crop = ImageOps.contain(crop, (_WORK_BOX, _WORK_BOX), Image.Resampling.BOX)
    return crop, peak


def _match_stroke(crop: Image.Image, box: int, stroke_px: float) -> Image.Image:
    """Widen or thin the strokes so that, once the crop is scaled to `box`, they are `stroke_px` wide."""
    scale = box / max(crop.size)
    width = _stroke_width(np.asarray(crop) > 64)
    radius = round((stroke_px / scale - width) / 2)
    if radius > 0:
        return ImageOps.expand(crop, border=radius, fill=0).filter(ImageFilter.MaxFilter(2 * radius + 1))
    if width * scale > 2 * stroke_px:
        return crop.filter(ImageFilter.MinFilter(2 * min(-radius, 8) + 1))
    return crop


def _line_art_normalize(drawing: Image.Image) -> Image.Image:
    # As OpenMoji's line art is drawn: black strokes of 2.25 px on white, the longer side of the ink
    # box 56 px, centred in 72x72. The image processor then scales it to the model's size, as it
    # scales the line art itself, so a drawing and the line art meet the model the same way.
    crop, _ = _cropped_ink(drawing)
    crop = _match_stroke(crop, LINE_ART_BOX, LINE_ART_STROKE_PX)
    box = crop.getbbox()  # thinning moved the outer edges in: crop to the ink again
    if box is None:
        raise ImageInputError("sketch is empty: no strokes found")
    crop = crop.crop(box)
    scale = LINE_ART_BOX / max(crop.size)
    new_size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    small = np.asarray(crop.resize(new_size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    if small.max() <= 0:
        raise ImageInputError("sketch is empty: no strokes found")
    small *= 255.0 / small.max()
    canvas = np.zeros((LINE_ART_SIZE, LINE_ART_SIZE), dtype=np.float32)
    top = (LINE_ART_SIZE - small.shape[0]) // 2
    left = (LINE_ART_SIZE - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return Image.fromarray((255.0 - canvas).astype(np.uint8), mode="L").convert("RGB")


def _mnist_normalize(drawing: Image.Image) -> Image.Image:
    # As MNIST itself was made: white on black, cropped to the ink, longer side
    # scaled to 20 px with anti-aliasing, centred by centre of mass in 28x28.
    crop, _ = _cropped_ink(drawing)
    # Thin or thick pens end up with MNIST-like strokes: widen or thin the
    # strokes before scaling down, so a 3 px pen on a phone still reads.
    crop = _match_stroke(crop, MNIST_BOX, MNIST_STROKE_PX)
    scale = MNIST_BOX / max(crop.size)
    new_size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    small = np.asarray(crop.resize(new_size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)
    if small.max() <= 0:
        raise ImageInputError("sketch is empty: no strokes found")
    small *= 255.0 / small.max()
    ys, xs = np.indices(small.shape)
    total = float(small.sum())
    cy, cx = float((ys * small).sum() / total), float((xs * small).sum() / total)
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    top_px = int(np.clip(round(MNIST_SIZE / 2 - cy), 0, MNIST_SIZE - small.shape[0]))
    left_px = int(np.clip(round(MNIST_SIZE / 2 - cx), 0, MNIST_SIZE - small.shape[1]))
    canvas[top_px : top_px + small.shape[0], left_px : left_px + small.shape[1]] = small
    return Image.fromarray(canvas.astype(np.uint8), mode="L").convert("RGB")


def decode_sketch(
    data: bytes,
    mode: SketchNormalization,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Image.Image:
    """Sketch bytes (a canvas PNG, transparent or on white) to a model-domain RGB image."""
    return normalize_sketch(
        decode_image(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes), mode
    )


# Domain tests: does a decoded picture already look like the images a normalisation produces (the
# model's own images)? One test per normalisation, beside it; a new domain adds its entry to
# DOMAIN_TESTS. Image queries (to_model_domain) get the normalisation only when the test says no.
DomainTest = Callable[[Image.Image], bool]

# An MNIST image: grey, white ink on a black background that fills the border, the ink's box
# 20 px of 28 on its longer side and centred by mass. The bounds are loose around what every
# MNIST test image measures (bench/domain.py counts the ones left as they are); a digit on paper,
# a colour picture, or a digit that fills its frame or sits off centre fails one of them.
_MNIST_MAX_CHROMA = 12.0  # mean max-min over R, G, B: a grey picture
_MNIST_BORDER_DARK = 0.9  # share of the outer ring (1/14 of the side) darker than 64
_MNIST_BOX_RANGE = (0.3, 0.85)  # longer side of the ink's box over the image's side (MNIST: 20/28)
# Centre of mass at most this far from the centre, over the side: MNIST's own are within 0.02, but a
# digit a little off centre is still the model's (training shifts digits by up to 0.1), and leaving
# near-domain pictures alone is the safe side of the test.
_MNIST_CENTRE_OFF = 0.2
_MNIST_MAX_ASPECT = 1.25


_DOMAIN_PROBE_PX = 128  # domain tests look at a copy at most this large: bounded cost for any upload


def _domain_probe(image: Image.Image) -> Image.Image:
    """A small RGB copy of `image` for the domain tests (their measures do not depend on the size)."""
    probe = image.convert("RGB")
    if max(probe.size) > _DOMAIN_PROBE_PX:
        probe = ImageOps.contain(probe, (_DOMAIN_PROBE_PX, _DOMAIN_PROBE_PX), Image.Resampling.BOX)
    return probe


def looks_like_mnist(image: Image.Image) -> bool:
    """True when `image` (decoded RGB) already looks like an MNIST digit, at any resolution."""
    width, height = image.size
    if max(width, height) > _MNIST_MAX_ASPECT * min(width, height):
        return False
    image = _domain_probe(image)
    width, height = image.size
    rgb = np.asarray(image, dtype=np.int16)
    if float((rgb.max(axis=2) - rgb.min(axis=2)).mean()) > _MNIST_MAX_CHROMA:
        return False
    gray = rgb.mean(axis=2)
    ring = max(1, round(min(width, height) / 14))
    border = np.concatenate(
        [gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel()]
    )
    if float((border < 64).mean()) < _MNIST_BORDER_DARK:
        return False
    peak = float(gray.max())
    if peak < 128:
        return False
    rows, cols = np.nonzero(gray > peak * 0.25)
    box = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / max(width, height)
    if not _MNIST_BOX_RANGE[0] <= box <= _MNIST_BOX_RANGE[1]:
        return False
    ys, xs = np.indices(gray.shape)
    total = float(gray.sum())
    off_y = float((ys * gray).sum()) / total / height - 0.5
    off_x = float((xs * gray).sum()) / total / width - 0.5
    return bool(max(abs(off_y), abs(off_x)) <= _MNIST_CENTRE_OFF)


# A line-art (emoji) model's images: colour emoji, and OpenMoji's black line art on white. A colour
# picture is in that domain (an emoji, or a photo the line-art normalisation could only spoil); a grey
# one is when it is a digital image on clean white with line art's strokes and size, or a solid shape
# (a grey emoji). A drawing on paper, scanned or photographed, has no clean white around it. Over the
# emoji collection's 4 x 1,906 images these keep 96% (colour styles) to 99% (line art) as they are.
_LINE_ART_COLOUR_SHARE = 0.02  # pixels whose R, G, B spread past 48: a colour picture
_LINE_ART_CLEAN_BORDER = 0.5  # share of the outer ring (1/14 of the side) at 250 or brighter
_LINE_ART_SOLID_SHARE = 0.25  # ink covering this much is a shape, not strokes
_LINE_ART_STROKE = (0.015, 0.055)  # stroke width over the side (OpenMoji: 2.25 px of 72 = 0.031)
_LINE_ART_BOX = (0.45, 0.95)  # longer side of the ink's box over the side (OpenMoji: 56 of 72)


def looks_like_line_art(image: Image.Image) -> bool:
    """True when `image` (decoded RGB, transparency on white) already looks like an emoji collection's
    images (the `line-art` normalisation's domain)."""
    rgb = np.asarray(_domain_probe(image), dtype=np.int16)
    if float(((rgb.max(axis=2) - rgb.min(axis=2)) > 48).mean()) >= _LINE_ART_COLOUR_SHARE:
        return True
    gray = rgb.mean(axis=2)
    height, width = gray.shape
    ring = max(1, round(min(width, height) / 14))
    border = np.concatenate(
        [gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel()]
    )
    if float((border >= 250).mean()) < _LINE_ART_CLEAN_BORDER:
        return False
    ink = gray < 128
    if not ink.any() or float(ink.mean()) >= _LINE_ART_SOLID_SHARE:
        return True
    rows, cols = np.nonzero(ink)
    box = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / max(width, height)
    stroke = _stroke_width(ink) / max(width, height)
    thin = _LINE_ART_STROKE[0] <= stroke <= _LINE_ART_STROKE[1]
    return bool(thin and _LINE_ART_BOX[0] <= box <= _LINE_ART_BOX[1])


# Keyed by the normalisation's name as checkpoints record it (SketchNormalization values).
DOMAIN_TESTS: dict[str, DomainTest] = {
    "none": lambda image: True,  # nothing to bring it into
    "mnist": looks_like_mnist,
    "line-art": looks_like_line_art,
}


def in_domain(image: Image.Image, mode: SketchNormalization) -> bool:
    """Whether `image` already looks like the model's images, for a model that records `mode`.

    A normalisation without a test (tests require one each) leaves every picture as it is.
    """
    test = DOMAIN_TESTS.get(mode.value)
    return True if test is None else test(image)


def to_model_domain(image: Image.Image, mode: SketchNormalization) -> tuple[Image.Image, SketchNormalization]:
    """A picture for a model whose sketches get `mode`: as it is when it already looks like the
    model's images, else normalised as a sketch. Returns the image and the normalisation applied.

    A picture the normalisation finds no strokes in (a blank page) is kept as it is: an image
    query has no duty to be a drawing.
    """
    if in_domain(image, mode):
        return image, SketchNormalization.NONE
    try:
        return normalize_sketch(image, mode), mode
    except ImageInputError:
        return image, SketchNormalization.NONE


def pixel_values(images: Sequence[Image.Image], processor: ImageProcessor) -> torch.Tensor:
    """RGB images to the model's input tensor via the checkpoint's (PIL) image processor."""
    if not images:
        raise ValueError("no images")
    return processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
