"""Shapes that fill a box exactly: each draws into the image and, when given, into the mask.

A box is ``(x0, y0, x1, y1)`` in pixels with the end exclusive, so the drawn pixels span exactly the
COCO box ``[x0, y0, x1 - x0, y1 - y0]``.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import ImageDraw

Box = tuple[int, int, int, int]
Fill = tuple[int, int, int] | int


def _last(box: Box) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return x0, y0, x1 - 1, y1 - 1


def rectangle(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    draw.rectangle(_last(box), fill=fill)


def frame(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = _last(box)
    width = max(2, min(x1 - x0, y1 - y0) // 4)
    draw.rectangle((x0, y0, x1, y1), outline=fill, width=width)


def ellipse(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    draw.ellipse(_last(box), fill=fill)


def triangle(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = _last(box)
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def diamond(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = _last(box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


def hexagon(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = _last(box)
    q = (x1 - x0) / 4
    cy = (y0 + y1) / 2
    draw.polygon([(x0 + q, y0), (x1 - q, y0), (x1, cy), (x1 - q, y1), (x0 + q, y1), (x0, cy)], fill=fill)


def plus(draw: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = _last(box)
    tx, ty = max(1, (x1 - x0) // 6), max(1, (y1 - y0) // 6)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 3
    draw.rectangle((cx - tx, y0, cx + tx, y1), fill=fill)
    draw.rectangle((x0, cy - ty, x1, cy + ty), fill=fill)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, Box, Fill], None]] = {
    "rectangle": rectangle, "frame": frame, "ellipse": ellipse, "triangle": triangle,
    "diamond": diamond, "hexagon": hexagon, "plus": plus,
}
