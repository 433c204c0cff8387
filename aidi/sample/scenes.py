"""The 8 adas_mini scenes: their kind and classes, and how the synthetic sample draws each class.

Every class has its own colour AND its own shape, so a tiny CNN tells them apart after a short CPU run.
The pack configs (configs/4pe_<scene>/train.py) list the same classes; a test keeps them in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["detection", "parsing"]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class DetClass:
    name: str
    shape: str          # a drawing function in aidi.sample.draw
    colour: RGB
    aspect: float       # box height / width


@dataclass(frozen=True)
class Scene:
    name: str
    kind: Kind
    classes: tuple[str, ...]


DETECTION_CLASSES: dict[str, tuple[DetClass, ...]] = {
    "cyclist": (DetClass("cyclist", "triangle", (255, 140, 0), 1.3),),
    "traffic_light": (DetClass("traffic_light", "ellipse", (230, 20, 20), 2.0),),
    "pedestrian": (DetClass("pedestrian", "plus", (220, 0, 220), 2.0),),
    "vehicle_rear": (DetClass("vehicle_front", "hexagon", (0, 220, 220), 0.8),
                     DetClass("vehicle_rear", "frame", (250, 250, 60), 0.8)),
    "vehicle": (DetClass("vehicle", "rectangle", (30, 60, 255), 0.6),),
    "traffic_sign": (DetClass("traffic_sign", "diamond", (40, 220, 40), 1.0),),
}

# Parsing classes: index = pixel value in the mask. Colours are what the synthetic images paint.
DEFAULT_PARSING: tuple[tuple[str, RGB], ...] = (
    ("road", (70, 70, 70)),
    ("sidewalk", (170, 100, 160)),
    ("building", (120, 80, 50)),
    ("wall", (210, 190, 140)),
    ("vegetation", (40, 140, 40)),
    ("sky", (120, 180, 240)),
    ("pole", (0, 200, 200)),
    ("traffic_sign", (250, 220, 0)),
    ("person", (220, 20, 60)),
    ("rider", (255, 130, 0)),
    ("car", (0, 0, 200)),
    ("lane_marking", (255, 255, 255)),
)
LANE_PARSING: tuple[tuple[str, RGB], ...] = (
    ("background", (80, 80, 80)),
    ("solid_line", (255, 255, 255)),
    ("dashed_line", (255, 210, 0)),
    ("road_edge", (200, 40, 40)),
)
PARSING_CLASSES: dict[str, tuple[tuple[str, RGB], ...]] = {
    "default_parsing": DEFAULT_PARSING,
    "lane_parsing": LANE_PARSING,
}

SCENES: dict[str, Scene] = {
    **{name: Scene(name, "detection", tuple(c.name for c in classes)) for name, classes in DETECTION_CLASSES.items()},
    **{name: Scene(name, "parsing", tuple(n for n, _ in classes)) for name, classes in PARSING_CLASSES.items()},
}
SCENE_NAMES: tuple[str, ...] = tuple(sorted(SCENES))
