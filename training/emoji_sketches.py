"""Simple canvas drawings (a flower, a bell, a pencil, a cat's face ...) with the concepts accepted for
each: the drawing query set of the emoji evaluation. Never trained on.

Each drawing is made the way a person draws on the page's canvas: dark strokes on a transparent
canvas of a few hundred pixels, with a thin, a medium or a thick pen; the encoder (and evaluation)
then bring it to the line art with the checkpoint's sketch normalisation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from PIL import Image, ImageDraw

CANVAS = 300
PENS = (4, 10, 18)

Draw = Callable[[ImageDraw.ImageDraw, int], None]


def _flower(d: ImageDraw.ImageDraw, w: int) -> None:
    for k in range(5):
        a = 2 * math.pi * k / 5
        x, y = 150 + 45 * math.cos(a), 110 + 45 * math.sin(a)
        d.ellipse((x - 30, y - 30, x + 30, y + 30), outline="black", width=w)
    d.ellipse((130, 90, 170, 130), outline="black", width=w)
    d.line((150, 160, 150, 280), fill="black", width=w)
    d.ellipse((150, 210, 200, 240), outline="black", width=w)


def _bell(d: ImageDraw.ImageDraw, w: int) -> None:
    d.arc((85, 50, 215, 190), 180, 360, fill="black", width=w)
    d.line((85, 120, 70, 230), fill="black", width=w)
    d.line((215, 120, 230, 230), fill="black", width=w)
    d.line((60, 230, 240, 230), fill="black", width=w)
    d.ellipse((135, 235, 165, 265), outline="black", width=w)
    d.ellipse((140, 30, 160, 50), outline="black", width=w)


def _pencil(d: ImageDraw.ImageDraw, w: int) -> None:
    body = [(60, 200), (200, 60), (240, 100), (100, 240)]
    d.polygon(body, outline="black", width=w)
    d.line([(60, 200), (30, 270), (100, 240)], fill="black", width=w)
    d.line((180, 80, 220, 120), fill="black", width=w)


def _cat_face(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((60, 80, 240, 250), outline="black", width=w)
    d.line([(75, 130), (80, 30), (130, 90)], fill="black", width=w)
    d.line([(225, 130), (220, 30), (170, 90)], fill="black", width=w)
    d.ellipse((105, 135, 125, 155), fill="black")
    d.ellipse((175, 135, 195, 155), fill="black")
    d.line([(140, 185), (150, 195), (160, 185)], fill="black", width=w)
    for dy in (-10, 5):
        d.line((40, 185 + dy, 110, 190), fill="black", width=max(2, w // 2))
        d.line((260, 185 + dy, 190, 190), fill="black", width=max(2, w // 2))


def _sun(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((100, 100, 200, 200), outline="black", width=w)
    for k in range(8):
        a = 2 * math.pi * k / 8
        d.line(
            (
                150 + 70 * math.cos(a),
                150 + 70 * math.sin(a),
                150 + 120 * math.cos(a),
                150 + 120 * math.sin(a),
            ),
            fill="black",
            width=w,
        )


def _house(d: ImageDraw.ImageDraw, w: int) -> None:
    d.rectangle((70, 140, 230, 270), outline="black", width=w)
    d.line([(50, 150), (150, 50), (250, 150)], fill="black", width=w)
    d.rectangle((130, 200, 170, 270), outline="black", width=w)


def _heart(d: ImageDraw.ImageDraw, w: int) -> None:
    points = []
    for k in range(60):
        t = 2 * math.pi * k / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((150 + 7 * x, 140 - 7 * y))
    d.line([*points, points[0]], fill="black", width=w, joint="curve")


def _star(d: ImageDraw.ImageDraw, w: int) -> None:
    points = []
    for k in range(10):
        a = -math.pi / 2 + math.pi * k / 5
        r = 120 if k % 2 == 0 else 50
        points.append((150 + r * math.cos(a), 160 + r * math.sin(a)))
    d.line([*points, points[0]], fill="black", width=w, joint="curve")


def _smiley(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((40, 40, 260, 260), outline="black", width=w)
    d.ellipse((100, 100, 125, 135), fill="black")
    d.ellipse((175, 100, 200, 135), fill="black")
    d.arc((90, 120, 210, 220), 20, 160, fill="black", width=w)


def _umbrella(d: ImageDraw.ImageDraw, w: int) -> None:
    d.chord((40, 60, 260, 240), 180, 360, outline="black", width=w)
    d.line((150, 150, 150, 250), fill="black", width=w)
    d.arc((110, 220, 150, 270), 0, 180, fill="black", width=w)


def _fish(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((50, 100, 210, 200), outline="black", width=w)
    d.polygon([(205, 150), (260, 100), (260, 200)], outline="black", width=w)
    d.ellipse((85, 130, 100, 145), fill="black")


def _tree(d: ImageDraw.ImageDraw, w: int) -> None:
    d.polygon([(150, 30), (220, 130), (80, 130)], outline="black", width=w)
    d.polygon([(150, 90), (240, 220), (60, 220)], outline="black", width=w)
    d.rectangle((135, 220, 165, 275), outline="black", width=w)


def _key(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((30, 110, 110, 190), outline="black", width=w)
    d.line((110, 150, 270, 150), fill="black", width=w)
    d.line((230, 150, 230, 190), fill="black", width=w)
    d.line((260, 150, 260, 185), fill="black", width=w)


def _cup(d: ImageDraw.ImageDraw, w: int) -> None:
    d.line([(70, 110), (90, 220), (190, 220), (210, 110), (70, 110)], fill="black", width=w)
    d.arc((185, 125, 245, 185), 270, 90, fill="black", width=w)
    d.line((50, 240, 250, 240), fill="black", width=w)
    for x in (110, 150):
        d.arc((x - 10, 40, x + 10, 100), 90, 270, fill="black", width=max(2, w // 2))


def _moon(d: ImageDraw.ImageDraw, w: int) -> None:
    d.arc((60, 40, 260, 260), 90, 270, fill="black", width=w)
    d.arc((110, 60, 250, 240), 110, 250, fill="black", width=w)


def _envelope(d: ImageDraw.ImageDraw, w: int) -> None:
    d.rectangle((40, 80, 260, 230), outline="black", width=w)
    d.line([(40, 80), (150, 170), (260, 80)], fill="black", width=w)


def _clock(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((40, 40, 260, 260), outline="black", width=w)
    d.line((150, 150, 150, 75), fill="black", width=w)
    d.line((150, 150, 205, 150), fill="black", width=w)


def _note(d: ImageDraw.ImageDraw, w: int) -> None:
    d.ellipse((70, 200, 140, 250), fill="black")
    d.line((135, 225, 135, 50), fill="black", width=w)
    d.line([(135, 50), (200, 90), (200, 130)], fill="black", width=w)


def _arrow(d: ImageDraw.ImageDraw, w: int) -> None:
    d.line((40, 150, 250, 150), fill="black", width=w)
    d.line([(180, 90), (250, 150), (180, 210)], fill="black", width=w)


CLOCKS = [f"{hour} o’clock" for hour in ("one", "two", "three", "four", "five", "six")]
SKETCHES: dict[str, tuple[Draw, list[str]]] = {
    "a flower": (
        _flower,
        [
            "cherry blossom",
            "white flower",
            "rosette",
            "rose",
            "sunflower",
            "blossom",
            "tulip",
            "hibiscus",
            "wilted flower",
        ],
    ),
    "a bell": (_bell, ["bell", "bell with slash", "bellhop bell"]),
    "a pencil": (_pencil, ["pencil", "crayon", "pen", "fountain pen"]),
    "a cat's face": (
        _cat_face,
        [
            "cat face",
            "cat",
            "grinning cat",
            "grinning cat with smiling eyes",
            "cat with wry smile",
            "kissing cat",
            "weary cat",
            "pouting cat",
            "crying cat",
            "smiling cat with heart-eyes",
            "cat with tears of joy",
        ],
    ),
    "a sun": (_sun, ["sun", "sun with face", "sunrise", "high voltage"]),
    "a house": (_house, ["house", "house with garden", "houses", "derelict house", "hut"]),
    "a heart": (
        _heart,
        [
            "red heart",
            "white heart",
            "black heart",
            "heart suit",
            "blue heart",
            "green heart",
            "yellow heart",
            "purple heart",
            "orange heart",
            "brown heart",
            "pink heart",
            "grey heart",
            "light blue heart",
            "heart exclamation",
        ],
    ),
    "a star": (_star, ["star", "glowing star", "shooting star"]),
    "a smiling face": (
        _smiley,
        [
            "slightly smiling face",
            "smiling face",
            "grinning face",
            "smiling face with smiling eyes",
            "beaming face with smiling eyes",
            "grinning face with big eyes",
            "relieved face",
            "upside-down face",
        ],
    ),
    "an umbrella": (
        _umbrella,
        ["umbrella", "closed umbrella", "umbrella with rain drops", "umbrella on ground"],
    ),
    "a fish": (_fish, ["fish", "tropical fish", "blowfish"]),
    "a tree": (_tree, ["evergreen tree", "Christmas tree", "deciduous tree"]),
    "a key": (_key, ["key", "old key"]),
    "a cup": (_cup, ["hot beverage", "teacup without handle", "cup with straw", "teapot"]),
    "a crescent moon": (
        _moon,
        [
            "crescent moon",
            "waxing crescent moon",
            "waning crescent moon",
            "first quarter moon face",
            "last quarter moon face",
        ],
    ),
    "an envelope": (
        _envelope,
        ["envelope", "incoming envelope", "envelope with arrow", "love letter", "e-mail"],
    ),
    "a clock": (_clock, ["alarm clock", "mantelpiece clock", "timer clock", "twelve o’clock", *CLOCKS]),
    "a musical note": (_note, ["musical note", "musical notes"]),
    "an arrow": (
        _arrow,
        ["right arrow", "left-right arrow", "right arrow curving down", "BACK arrow", "END arrow"],
    ),
}


def drawn_sketches() -> list[tuple[str, int, bytes, list[str]]]:
    """(name, pen width, PNG bytes of a transparent canvas, accepted labels) for every drawing and pen."""
    out = []
    for name, (draw, accepted) in SKETCHES.items():
        for pen in PENS:
            canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
            draw(ImageDraw.Draw(canvas), pen)
            buffer = io.BytesIO()
            canvas.save(buffer, format="PNG")
            out.append((name, pen, buffer.getvalue(), accepted))
    return out
