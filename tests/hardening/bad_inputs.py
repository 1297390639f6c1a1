"""Hostile and odd inputs: broken images, decompression bombs, odd modes, odd text.

Built in memory, deterministically, so every run sends the same bytes.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache

from hypothesis import HealthCheck, settings
from PIL import Image, ImageDraw

from tests.gateway.conftest import digit_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Hypothesis settings of the fuzz tests against the running services: deterministic and bounded.
SERVICE_FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def digit(label: int = 7, size: int = 28) -> Image.Image:
    return Image.open(io.BytesIO(digit_png(label, size=size))).convert("RGB")


@cache
def valid_images() -> dict[str, bytes]:
    """One good file per format the services read."""
    image = digit()
    return {
        "png": encode(image, "PNG"),
        "jpeg": encode(image, "JPEG", quality=90),
        "webp": encode(image, "WEBP"),
        "gif": encode(image.convert("P"), "GIF"),
        "bmp": encode(image, "BMP"),
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose header claims `width`x`height` but whose data is a few bytes (truncated bomb)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


@cache
def real_bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A complete, valid 1-bit PNG of `width`x`height`: tens of KB that decode to 400 megapixels."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def animated(image_format: str) -> bytes:
    frames = [digit(label) for label in (1, 4, 7)]
    if image_format == "GIF":
        frames = [frame.convert("P") for frame in frames]
    return encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)


@cache
def odd_but_valid_images() -> dict[str, bytes]:
    """Images every endpoint must accept (or refuse with a reason): odd sizes, modes, animations."""
    base = digit()
    sixteen_bit = Image.new("I;16", (28, 28), 0)
    ImageDraw.Draw(sixteen_bit).line((4, 4, 24, 24), fill=60000, width=3)
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).line((10, 10, 50, 50), fill=(0, 0, 0, 255), width=5)
    return {
        "1x1 png": encode(Image.new("RGB", (1, 1), (0, 0, 0)), "PNG"),
        "1x1 white png": encode(Image.new("L", (1, 1), 255), "PNG"),
        "1x1 gif": encode(Image.new("P", (1, 1), 0), "GIF"),
        "cmyk jpeg": encode(base.convert("CMYK"), "JPEG"),
        "16-bit png": encode(sixteen_bit, "PNG"),
        "float tiff": encode(base.convert("F"), "TIFF"),
        "1-bit png": encode(base.convert("1"), "PNG"),
        "la png": encode(base.convert("LA"), "PNG"),
        "transparent canvas": encode(transparent, "PNG"),
        "animated gif": animated("GIF"),
        "animated webp": animated("WEBP"),
        "animated png": animated("PNG"),
        "tall 10x1000": encode(Image.new("L", (10, 1000), 255), "PNG"),
        "wide 3000x30": encode(Image.new("L", (3000, 30), 0), "PNG"),
        "all white": encode(Image.new("RGB", (100, 100), (255, 255, 255)), "PNG"),
        "all black": encode(Image.new("RGB", (100, 100), (0, 0, 0)), "PNG"),
    }


@cache
def mangled_images() -> dict[str, bytes]:
    """Valid files with bytes overwritten: some still decode (pixel data), some must be refused."""
    found: dict[str, bytes] = {}
    rng = random.Random(0)
    for name, data in valid_images().items():
        for trial in range(6):
            corrupt = bytearray(data)
            for _ in range(1 + trial * 3):
                position = rng.randrange(8, len(corrupt))  # keep the signature: reach the decoder
                corrupt[position] = rng.randrange(256)
            found[f"{name} corrupted #{trial}"] = bytes(corrupt)
    return found


@cache
def broken_images() -> dict[str, bytes]:
    """Images that cannot be used: truncated, bombs, extreme shapes, not images at all."""
    found: dict[str, bytes] = {}
    rng = random.Random(1)
    for name, data in valid_images().items():
        for cut in (1, 8, 16, 33, len(data) // 3, len(data) // 2):
            found[f"{name} truncated at {cut}"] = data[:cut]
    found |= {
        "png header 20000x20000": png_claiming(20000, 20000),
        "png header 65535x65535 16-bit rgba": png_claiming(65535, 65535, bit_depth=16, color_type=6),
        "png header 0x0": png_claiming(0, 0),
        "png header 2^31-1 wide": png_claiming(2**31 - 1, 1),
        "real 20000x20000 1-bit png": real_bomb_png(),
        "extreme aspect 1x60000": encode(Image.new("1", (1, 60000), 1), "PNG"),
        "extreme aspect 200000x2": encode(Image.new("1", (200000, 2), 1), "PNG"),
        "text": b"hello, I am not an image",
        "html": b"<!doctype html><html><body>hi</body></html>",
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip": b"PK\x03\x04" + bytes(40),
        "nul bytes": bytes(1024),
        "random bytes": bytes(rng.randrange(256) for _ in range(2048)),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    }
    return found


# Texts that must never reach the model unchecked, or must be embedded without failing.
ODD_TEXTS: dict[str, str] = {
    "empty": "",
    "spaces": "   \t\n  ",
    "nul": "seven\x00",
    "only nul": "\x00\x00",
    "control": "\x01\x02\x1b[31mred\x7f",
    "zero width": "se\u200bv\u200ce\u200dn\ufeff",
    "only zero width": "\u200b\u200b\u200b",
    "rtl": "\u202esneves\u202c \u05e9\u05d1\u05e2 \u0633\u0628\u0639\u0629",
    "combining": "s\u0301\u0301\u0301e\u0308v\u0327en" + "\u0301" * 500,
    "emoji": "7\ufe0f\u20e3 \U0001f9d1\u200d\U0001f4bb \U0001f1fa\U0001f1f8",
    "private use": "\ue000\U000f0000\U0010fffd",
    "unassigned": "\U000e0080\u0378",
    "lone surrogate": "seven \ud800",
    "reversed surrogates": "\udc00\ud800",
    "line separators": "a\u2028b\u2029c\x85d",
    "long": "seven " * 400,
    "huge": "x" * 200_000,
}


def _ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry declares 256x256 but holds `png` (of any size)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def _icns_holding(png: bytes) -> bytes:
    entry = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def _gif_frame_over_screen(width: int, height: int) -> bytes:
    """A GIF whose screen is 10x10 and whose first frame claims `width`x`height`."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0x80) + bytes(6)
    return screen + frame + b"\x02\x02\x4c\x01\x00\x3b"


def _apng_with_huge_second_frame() -> bytes:
    """A small APNG whose second frame's control chunk claims 20000x20000 (never decoded)."""
    data = animated("PNG")
    marker = data.index(b"fcTL", data.index(b"fcTL") + 4)  # the second frame's control chunk
    body = bytearray(data[marker + 4 : marker + 4 + 26])
    body[4:12] = struct.pack(">II", 20000, 20000)
    chunk = b"fcTL" + bytes(body)
    start = marker - 4  # length field
    return (
        data[:start]
        + struct.pack(">I", 26)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + data[marker + 34 :]
    )


def _png_text_bomb(chunks: int = 80) -> bytes:
    """A 1x1 PNG with `chunks` zTXt chunks of 1 MB of text each (a few KB compressed)."""
    image = encode(Image.new("L", (1, 1)), "PNG")
    text = zlib.compress(b"x" * (1024 * 1024), 9)
    ztxt = b"".join(_chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(chunks))
    end = image.index(b"IDAT") - 4
    return image[:end] + ztxt + image[end:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG whose SOF header claims `width`x`height` (its data is a 16x16 image's)."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@cache
def containers() -> dict[str, bytes]:
    """Containers and headers that hold (or claim) more than they announce; all must be refused
    quickly, or decoded as their small first frame, without decoding anything large."""
    small = digit()
    big_page = Image.new("L", (6000, 6000), 0)
    tiff, mpo = io.BytesIO(), io.BytesIO()
    small.save(tiff, "TIFF", save_all=True, append_images=[big_page], compression="tiff_deflate")
    small.save(mpo, "MPO", save_all=True, append_images=[big_page.convert("RGB")])
    return {
        "ico holding a 9400x9400 png": _ico_holding(real_bomb_png(9400, 9400)),
        "ico holding a small png": _ico_holding(valid_images()["png"]),
        "icns holding a 9400x9400 png": _icns_holding(real_bomb_png(9400, 9400)),
        "gif frame 20000x20000 on a 10x10 screen": _gif_frame_over_screen(20000, 20000),
        "gif frame 7000x7000 on a 10x10 screen": _gif_frame_over_screen(7000, 7000),
        "tiff with a 6000x6000 second page": tiff.getvalue(),
        "mpo with a 6000x6000 second image": mpo.getvalue(),
        "apng whose second frame claims 20000x20000": _apng_with_huge_second_frame(),
        "png with 80 MB of zTXt": _png_text_bomb(),
        "jpeg claiming 65000x65000": _jpeg_claiming(65000, 65000),
        "jpeg claiming 9000x9000": _jpeg_claiming(9000, 9000),
        "png 8000x8000 (64 MP, 1-bit)": real_bomb_png(8000, 8000),
        "png 4500x4500 rgb (20 MP)": encode(Image.new("RGB", (4500, 4500), (9, 9, 9)), "PNG"),
        "psd": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 20000, 20000, 8, 3) + bytes(64),
        "tga": struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, 20000, 20000, 24, 0) + bytes(64),
        "qoi": b"qoif" + struct.pack(">II", 20000, 20000) + b"\x04\x00" + bytes(16),
    }


# Strings no check foresaw: halves of surrogate pairs, noncharacters, controls, marks, widths,
# case mappings that change length, digits of other scripts, the largest code point.
UNICODE_EDGES: dict[str, str] = {
    "lone high surrogate": "\ud800",
    "lone low surrogate": "\udfff",
    "surrogate inside text": "test\ud83dtest",
    "reversed pair": "\ude00\ud83d",
    "nul": "\x00",
    "bom": "\ufeff",
    "noncharacters": "\ufffe\uffff\U0010ffff",
    "replacement character": "\ufffd",
    "controls": "\x01\x1b[2J\x7f\x85",
    "bidi override": "\u202etset\u202c",
    "combining pile": "t" + "\u0301" * 2000,
    "zwj emoji": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "fullwidth digits": "\uff17",
    "arabic-indic digits": "\u0667",
    "dotted capital i": "\u0130" * 50,
    "sharp s": "\u00df" * 50,
    "line separators": "a\u2028b\u2029c",
    "private use": "\ue000\U000f0000",
    "tags": "\U000e0074\U000e0065\U000e0073\U000e0074",
    "long": "\u4e03" * 5000,
}


def utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
