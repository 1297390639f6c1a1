"""Decoding an untrusted image with bounded work: its size is known and checked before any pixel
is decoded, and what is held at once is bounded.

- Only formats whose pixel size is in their header are opened (PNG, JPEG, WebP, GIF, BMP,
  TIFF); containers that hold images of other sizes than they announce (ICO, ICNS, ...)
  and everything else Pillow would try are refused. Of an animation, a multi-page TIFF or
  an MPO only the first frame is decoded; its size is the header's.
- A JPEG larger than needed is decoded at a reduced scale (1/2 to 1/8, the codec's own).
- The size is checked against a pixel limit and against a budget for the bytes the
  decoding holds at once (Pillow keeps RGB and most other modes at 4 bytes a pixel; some
  modes need a converted copy before they can be shrunk).
- Decodings of more than LARGE_DECODE_BYTES run one at a time in the process, so a
  request of many large images, or many requests of one, hold one large raster at a time.
- Right after decoding, an image larger than any model needs is shrunk by an integer
  factor (a box filter) and turned upright, so what follows (colour conversion, sketch
  normalisation, the model's processor) works on a small copy.
"""

from __future__ import annotations

import io
import math
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError

# Formats whose header gives the size of what is decoded. The message names them.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# What decoding one image may hold at once: about 16 megapixels of RGB.
DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024
# Decodings past this many bytes wait for one another (one at a time in the process).
LARGE_DECODE_BYTES = 16 * 1024 * 1024
# After decoding, an image is shrunk while its shorter side stays at least WORKING_SIDE (several
# times any model's input) and until its longer side is at most MAX_WORKING_SIDE.
WORKING_SIDE = 512
MAX_WORKING_SIDE = 8192
# Pillow reads PNG text chunks (zTXt can be a decompression bomb) while opening; its default
# allowance is 64 MB per image. Nothing here reads them.
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024

# Bytes held per pixel while decoding and shrinking, by mode: the raster (Pillow keeps "1", "L"
# and "P" at one byte, "I;16" at two, the rest at four) plus the copy a mode that cannot be
# shrunk as it is needs ("1" to "L", "P" to RGB(A), "I;16" to 8 bits).
_BYTES_PER_PIXEL = {"1": 2, "L": 1, "P": 5, "I;16": 5, "I;16B": 5, "I;16L": 5, "I;16N": 5}
_DEFAULT_BYTES_PER_PIXEL = 4

_large_decodes = threading.Semaphore(1)
# Pillow keeps the blocks (16 MB each) of freed images for the next image, up to one budget's
# worth. Returned to malloc instead, they would stay in the arena of the thread that decoded
# them, and two decoding threads would hold two large rasters' worth between them.
Image.core.set_blocks_max(max(1, DEFAULT_MAX_DECODED_BYTES // Image.core.get_block_size()))


class ImageLimitError(ValueError):
    """The image is refused before it is decoded; the message says why, for the caller."""


def open_checked(
    data: bytes, *, max_pixels: int, max_aspect_ratio: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> Image.Image:
    """Open (header only) and check an image; `load_shrunk` decodes it.

    Raises ImageLimitError for a size over the limits, UnidentifiedImageError for a format
    not in FORMATS, and whatever Pillow raises for a header it cannot read.
    """
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    if image.format == "JPEG" or image.format == "MPO":
        # The codec decodes at 1/2, 1/4 or 1/8 scale where the result stays at least this large.
        image.draft(image.mode, (WORKING_SIDE, WORKING_SIDE))
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLimitError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLimitError(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageLimitError(
            f"image is {width}x{height}; one side may be at most {max_aspect_ratio} times the other"
        )
    needed = decoded_bytes(image)
    if needed > max_decoded_bytes:
        raise ImageLimitError(
            f"image is {width}x{height} in mode {image.mode}, which takes {needed:,} bytes to decode; "
            f"the limit is {max_decoded_bytes:,}"
        )
    return image


def decoded_bytes(image: Image.Image) -> int:
    return image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, _DEFAULT_BYTES_PER_PIXEL)


def load_shrunk(image: Image.Image) -> Image.Image:
    """Decode the first frame of an image from `open_checked`, shrink it to a working size (the
    full-size raster is let go before the next large decoding may start) and turn it upright
    by its EXIF orientation."""
    if decoded_bytes(image) <= LARGE_DECODE_BYTES:
        return _decoded_and_shrunk(image)
    with _large_decodes:
        return _decoded_and_shrunk(image)


def _decoded_and_shrunk(image: Image.Image) -> Image.Image:
    # Read once decoded: asked before, a PNG decodes itself whole to look for EXIF after its pixels.
    orientation = _first_frame(image).getexif().get(ExifTags.Base.Orientation)
    shrunk = _shrink(image)
    if shrunk is not image:
        image.close()  # frees the full-size raster now, not when the caller lets go of `image`
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return shrunk.transpose(method) if method is not None else shrunk


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose, which
# a shrunk copy, having no EXIF, cannot use).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _first_frame(image: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image.seek(0)  # first frame of an animation, first page of a TIFF, first image of an MPO
        image.load()
    return image


def shrink_factor(width: int, height: int) -> int:
    by_shorter = min(width, height) // WORKING_SIDE
    by_longer = math.ceil(max(width, height) / MAX_WORKING_SIDE)
    return max(1, by_shorter, by_longer)


def _shrink(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        image = _sixteen_to_eight_bits(image)
    factor = shrink_factor(*image.size)
    if factor == 1:
        return image
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    info = image.info
    try:
        reduced = image.reduce(factor)
    except ValueError:  # a mode Pillow cannot reduce: resample instead
        reduced = image.convert("RGBA").reduce(factor)
    reduced.info = info  # keeps EXIF orientation and transparency for what follows
    return reduced


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """16-bit greyscale to 8 bits, in place on one copy (the float path of other modes would
    hold eight bytes a pixel)."""
    pixels = np.asarray(image, dtype=np.uint16).copy()
    pixels //= 257
    eight = Image.fromarray(pixels.astype(np.uint8), mode="L")
    eight.info = image.info
    return eight


__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "FORMATS",
    "FORMAT_NAMES",
    "ImageLimitError",
    "UnidentifiedImageError",
    "decoded_bytes",
    "load_shrunk",
    "open_checked",
    "shrink_factor",
]
