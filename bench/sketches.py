"""Digits drawn the way a person draws them on the web page's 280x280 canvas.

Each digit is one of a few hand styles, each style 1-3 strokes given as control
points in a unit box (x right, y down). A variant smooths the points into a
pen path, jitters them, applies a random size, slant, rotation and position,
and draws black round-capped strokes of 8-24 px on white, anti-aliased like a
browser canvas. Seeded, so a run is repeatable.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

CANVAS_PX = 280
SUPERSAMPLE = 3  # draw larger and scale down: anti-aliased edges like a browser canvas
Point = tuple[float, float]
Stroke = list[Point]


def arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float) -> Stroke:
    """Points along an elliptical arc; angles clockwise on screen (0 right, 90 down)."""
    steps = max(4, int(abs(end_deg - start_deg) / 6))
    return [
        (
            cx + rx * math.cos(math.radians(start_deg + (end_deg - start_deg) * i / steps)),
            cy + ry * math.sin(math.radians(start_deg + (end_deg - start_deg) * i / steps)),
        )
        for i in range(steps + 1)
    ]


def _zero() -> list[Stroke]:
    return [arc(0.5, 0.5, 0.45, 0.5, -80, -440)]


def _one_plain() -> list[Stroke]:
    return [[(0.55, 0.0), (0.5, 1.0)]]


def _one_flag() -> list[Stroke]:
    return [[(0.25, 0.22), (0.55, 0.0), (0.5, 1.0)]]


def _one_flag_base() -> list[Stroke]:
    return [[(0.25, 0.22), (0.55, 0.0), (0.5, 1.0)], [(0.2, 1.0), (0.8, 1.0)]]


def _two() -> list[Stroke]:
    return [[*arc(0.5, 0.3, 0.42, 0.3, -165, 20), (0.05, 1.0), (0.95, 1.0)]]


def _two_loop() -> list[Stroke]:
    return [[*arc(0.5, 0.3, 0.42, 0.3, -165, 25), (0.15, 0.95), (0.25, 0.85), (0.35, 1.0), (0.95, 1.0)]]


def _three() -> list[Stroke]:
    return [[*arc(0.45, 0.26, 0.4, 0.26, -160, 90), *arc(0.45, 0.74, 0.47, 0.26, -90, 155)]]


def _three_flat_top() -> list[Stroke]:
    return [[(0.1, 0.0), (0.9, 0.0), (0.4, 0.42), *arc(0.45, 0.7, 0.47, 0.3, -80, 155)]]


def _four_open() -> list[Stroke]:
    return [[(0.35, 0.0), (0.08, 0.6), (0.95, 0.6)], [(0.75, 0.05), (0.72, 1.0)]]


def _four_closed() -> list[Stroke]:
    return [[(0.7, 0.0), (0.05, 0.65), (0.95, 0.65)], [(0.7, 0.0), (0.7, 1.0)]]


def _five() -> list[Stroke]:
    return [[(0.2, 0.0), (0.14, 0.45), *arc(0.45, 0.7, 0.45, 0.3, -140, 150)], [(0.2, 0.0), (0.9, 0.0)]]


def _five_one_stroke() -> list[Stroke]:
    return [[(0.9, 0.0), (0.2, 0.0), (0.14, 0.45), *arc(0.45, 0.7, 0.45, 0.3, -140, 150)]]


def _six() -> list[Stroke]:
    return [[(0.8, 0.0), (0.45, 0.12), (0.2, 0.38), *arc(0.5, 0.7, 0.38, 0.3, 180, -170)]]


def _seven() -> list[Stroke]:
    return [[(0.05, 0.0), (0.95, 0.0), (0.35, 1.0)]]


def _seven_crossed() -> list[Stroke]:
    return [[(0.05, 0.05), (0.95, 0.0), (0.4, 1.0)], [(0.35, 0.5), (0.85, 0.5)]]


def _eight_one_stroke() -> list[Stroke]:
    # A figure of eight: one pen path crossing itself in the middle.
    return [
        [
            (
                0.5 + 0.42 * math.sin(2 * t) * (0.8 if t < math.pi / 2 or t > 3 * math.pi / 2 else 1.0),
                0.5 - 0.5 * math.cos(t),
            )
            for t in (i * 2 * math.pi / 60 for i in range(64))
        ]
    ]


def _eight_two_loops() -> list[Stroke]:
    return [arc(0.5, 0.24, 0.34, 0.24, 0, 360), arc(0.5, 0.73, 0.44, 0.27, 0, 360)]


def _nine() -> list[Stroke]:
    return [[*arc(0.48, 0.28, 0.42, 0.28, 10, -355), (0.88, 0.55), (0.8, 1.0)]]


def _nine_curved_tail() -> list[Stroke]:
    return [[*arc(0.48, 0.28, 0.42, 0.28, 10, -355), (0.85, 0.7), (0.6, 0.97), (0.3, 0.9)]]


STYLES: dict[int, Sequence[Callable[[], list[Stroke]]]] = {
    0: [_zero],
    1: [_one_plain, _one_flag, _one_flag_base],
    2: [_two, _two_loop],
    3: [_three, _three_flat_top],
    4: [_four_open, _four_closed],
    5: [_five, _five_one_stroke],
    6: [_six],
    7: [_seven, _seven_crossed],
    8: [_eight_one_stroke, _eight_two_loops],
    9: [_nine, _nine_curved_tail],
}
# Width over height of each digit's box: a "1" is a tall narrow box.
ASPECT = {0: 0.7, 1: 0.35, 2: 0.65, 3: 0.6, 4: 0.7, 5: 0.62, 6: 0.62, 7: 0.62, 8: 0.6, 9: 0.6}


@dataclass(frozen=True)
class Sketch:
    digit: int
    png: bytes
    image: Image.Image  # RGBA as drawn (transparent background where requested)
    stroke_px: float
    transparent: bool


def _densify(stroke: Stroke, step: float = 0.02) -> Stroke:
    """Straight segments split into short pieces, so jitter bends them like a hand."""
    points = [stroke[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
        pieces = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        points += [(x0 + (x1 - x0) * i / pieces, y0 + (y1 - y0) * i / pieces) for i in range(1, pieces + 1)]
    return points


def _wobble(stroke: Stroke, rng: random.Random, amount: float) -> Stroke:
    """A slow random drift along the stroke (a shaky hand, not pixel noise)."""
    dx = dy = 0.0
    out = []
    for x, y in stroke:
        dx = 0.93 * dx + rng.gauss(0, amount)
        dy = 0.93 * dy + rng.gauss(0, amount)
        out.append((x + dx, y + dy))
    return out


def draw_digit(digit: int, rng: random.Random, *, transparent: bool = False) -> Sketch:
    style = rng.choice(STYLES[digit])
    height = rng.uniform(110, 235)
    width = height * ASPECT[digit] * rng.uniform(0.8, 1.2)
    slant = rng.uniform(-0.1, 0.25)  # people mostly lean digits to the right
    angle = math.radians(rng.uniform(-10, 10))
    stroke_px = rng.uniform(8, 24)
    margin = stroke_px / 2 + 4
    room_x, room_y = CANVAS_PX - width - 2 * margin, CANVAS_PX - height - 2 * margin
    left = margin + rng.uniform(0.1, 0.9) * max(room_x, 0)
    top = margin + rng.uniform(0.1, 0.9) * max(room_y, 0)
    cx, cy = left + width / 2, top + height / 2

    def place(point: Point) -> Point:
        x, y = (point[0] - 0.5) * width, (point[1] - 0.5) * height
        x -= slant * y
        rx = x * math.cos(angle) - y * math.sin(angle)
        ry = x * math.sin(angle) + y * math.cos(angle)
        return ((cx + rx) * SUPERSAMPLE, (cy + ry) * SUPERSAMPLE)

    size = CANVAS_PX * SUPERSAMPLE
    background = (255, 255, 255, 0) if transparent else (255, 255, 255, 255)
    image = Image.new("RGBA", (size, size), background)
    pen = ImageDraw.Draw(image)
    pen_px = stroke_px * SUPERSAMPLE
    for stroke in style():
        points = [place(p) for p in _wobble(_densify(stroke), rng, 0.004)]
        pen.line(points, fill=(0, 0, 0, 255), width=round(pen_px), joint="curve")
        for x, y in (points[0], points[-1]):  # round caps, as lineCap = "round"
            pen.ellipse((x - pen_px / 2, y - pen_px / 2, x + pen_px / 2, y + pen_px / 2), fill=(0, 0, 0, 255))
    image = image.resize((CANVAS_PX, CANVAS_PX), Image.Resampling.LANCZOS)
    if not transparent:
        image = image.convert("RGB").convert("RGBA")
    buffer = io.BytesIO()
    (image if transparent else image.convert("RGB")).save(buffer, format="PNG")
    return Sketch(digit, buffer.getvalue(), image, stroke_px, transparent)


def sketch_set(variants_per_digit: int, seed: int = 0, transparent_every: int = 5) -> list[Sketch]:
    """`variants_per_digit` drawings of each digit; every `transparent_every`-th on a transparent canvas."""
    rng = random.Random(seed)
    return [
        draw_digit(digit, rng, transparent=variant % transparent_every == transparent_every - 1)
        for digit in range(10)
        for variant in range(variants_per_digit)
    ]
