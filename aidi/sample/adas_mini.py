"""A deterministic synthetic adas_mini: the 8 scenes in the layout `aidi pack` reads (docs/packing.md).

Detection scenes get JPEGs with drawn objects and a COCO-style ``annotations.json``; parsing scenes
get JPEG + PNG label-mask pairs. Image ``i`` of a scene depends only on (seed, scene, i), so a larger
``--images`` keeps the first images unchanged.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aidi.errors import UsageError
from aidi.sample.draw import SHAPES, Box, diamond, ellipse, rectangle, triangle
from aidi.sample.scenes import DETECTION_CLASSES, PARSING_CLASSES, RGB, SCENE_NAMES, SCENES

DEFAULT_IMAGES = 200
DEFAULT_SIZE = (192, 128)
JPEG_QUALITY = 90
MAX_OBJECTS = 4

OnImage = Callable[[int], None]


@dataclass
class SampleSummary:
    out: Path
    seed: int
    size: tuple[int, int]
    images: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "seed": self.seed, "size": list(self.size),
                "images": self.images, "objects": self.objects}


def image_name(scene: str, index: int) -> str:
    return f"{scene}_{index:06d}"


def _rng(seed: int, scene: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SCENE_NAMES.index(scene), index])


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 18) -> RGB:
    r, g, b = (int(v) for v in np.clip(np.array(colour) + rng.integers(-amount, amount + 1, 3), 0, 255))
    return r, g, b


def _finish(rng: np.random.Generator, canvas: Image.Image, noise: float = 6.0) -> Image.Image:
    pixels = np.asarray(canvas, dtype=np.int16) + rng.normal(0.0, noise, (canvas.height, canvas.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _street(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A dull sky-over-road background whose colours no class uses."""
    width, height = size
    horizon = int(height * rng.uniform(0.3, 0.45))
    canvas = Image.new("RGB", size)
    draw = ImageDraw.Draw(canvas)
    top, bottom = _jitter(rng, (150, 160, 170), 10), _jitter(rng, (95, 95, 100), 10)
    draw.rectangle((0, 0, width, horizon), fill=top)
    draw.rectangle((0, horizon, width, height), fill=bottom)
    return canvas


def _free_box(rng: np.random.Generator, size: tuple[int, int], aspect: float, taken: list[Box]) -> Box | None:
    width, height = size
    for _ in range(30):
        w = int(rng.integers(max(8, width // 12), max(9, width // 4)))
        h = min(round(w * aspect), int(height * 0.7))
        w = max(8, min(w, round(h / aspect)))
        if w >= width - 2 or h >= height - 2:
            continue
        x0 = int(rng.integers(1, width - w - 1))
        y0 = int(rng.integers(1, height - h - 1))
        box = (x0, y0, x0 + w, y0 + h)
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1] for t in taken):
            return box
    return None


def detection_image(scene: str, index: int, seed: int,
                    size: tuple[int, int]) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """One detection image and its objects as (class index, box)."""
    rng = _rng(seed, scene, index)
    classes = DETECTION_CLASSES[scene]
    canvas = _street(rng, size)
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[int, Box]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(classes)))
        box = _free_box(rng, size, classes[cls].aspect, [b for _, b in objects])
        if box is None:
            continue
        SHAPES[classes[cls].shape](draw, box, _jitter(rng, classes[cls].colour))
        objects.append((cls, box))
    return _finish(rng, canvas), objects


def _paint(image: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, shape: Callable[..., None], box: Box,
           colour: RGB, cls: int, rng: np.random.Generator) -> None:
    shape(image, box, _jitter(rng, colour, 12))
    shape(mask, box, cls)


def _polygon(image: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, points: list[tuple[float, float]],
             colour: RGB, cls: int, rng: np.random.Generator) -> None:
    image.polygon(points, fill=_jitter(rng, colour, 12))
    mask.polygon(points, fill=cls)


def default_parsing_image(index: int, seed: int, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A street: sky, buildings, walls and trees on the horizon, road with markings, poles, signs, people, cars."""
    rng = _rng(seed, "default_parsing", index)
    palette = dict(PARSING_CLASSES["default_parsing"])
    ids = {name: i for i, (name, _) in enumerate(PARSING_CLASSES["default_parsing"])}
    width, height = size
    canvas, mask = Image.new("RGB", size), Image.new("L", size)
    image_draw, mask_draw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)

    def paint(name: str, shape: Callable[..., None], box: Box) -> None:
        _paint(image_draw, mask_draw, shape, box, palette[name], ids[name], rng)

    horizon = int(height * rng.uniform(0.35, 0.5))
    paint("sky", rectangle, (0, 0, width, horizon))
    paint("road", rectangle, (0, horizon, width, height))
    x = 0
    while x < width:
        w = int(rng.integers(width // 10, width // 4))
        top = int(rng.integers(2, max(3, horizon - 4)))
        name = "building" if rng.random() < 0.7 else "wall"
        top = top if name == "building" else max(top, horizon * 2 // 3)
        paint(name, rectangle, (x, top, min(x + w, width), horizon))
        x += w + int(rng.integers(0, width // 8))
    for _ in range(int(rng.integers(1, 4))):
        r, cx = int(rng.integers(height // 14, height // 7)), int(rng.integers(0, width))
        paint("vegetation", ellipse, (cx - r, horizon - 2 * r, cx + r, horizon + r // 2))
    vanish = width * rng.uniform(0.4, 0.6)
    _polygon(image_draw, mask_draw,
             [(0, horizon), (vanish - width * 0.1, horizon), (width * 0.15, height), (0, height)],
             palette["sidewalk"], ids["sidewalk"], rng)
    _polygon(image_draw, mask_draw,
             [(vanish + width * 0.1, horizon), (width, horizon), (width, height), (width * 0.85, height)],
             palette["sidewalk"], ids["sidewalk"], rng)
    for t in np.linspace(0.15, 0.9, 4):
        y0, y1 = horizon + (height - horizon) * t, horizon + (height - horizon) * (t + 0.12)
        half = lambda y: 1 + (y - horizon) / (height - horizon) * width * 0.02  # noqa: E731 - a local formula
        _polygon(image_draw, mask_draw, [(vanish - half(y0), y0), (vanish + half(y0), y0),
                                         (vanish + half(y1), y1), (vanish - half(y1), y1)],
                 palette["lane_marking"], ids["lane_marking"], rng)
    for _ in range(int(rng.integers(1, 3))):
        px = int(rng.integers(2, width - 6))
        top = int(rng.integers(horizon // 2, horizon))
        bottom = int(rng.integers(horizon + 4, height))
        paint("pole", rectangle, (px, top, px + 2, bottom))
        s = int(rng.integers(6, 12))
        paint("traffic_sign", diamond, (px + 1 - s, top - s, px + 1 + s, top + s))
    movers = (("car", rectangle, 0.6), ("person", ellipse, 2.2), ("rider", triangle, 1.4))
    for _ in range(int(rng.integers(2, 6))):
        name, shape, aspect = movers[int(rng.integers(len(movers)))]
        w = int(rng.integers(width // 16, width // 5))
        h = max(6, int(w * aspect))
        x0 = int(rng.integers(0, max(1, width - w)))
        y1 = int(rng.integers(horizon + h // 3, height + 1))
        paint(name, shape, (x0, max(0, y1 - h), x0 + w, y1))
    return _finish(rng, canvas, 5.0), mask


def lane_parsing_image(index: int, seed: int, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A road from the driver's seat: solid lines, dashed lines and the road edges converging on the horizon."""
    rng = _rng(seed, "lane_parsing", index)
    palette = dict(PARSING_CLASSES["lane_parsing"])
    width, height = size
    canvas = _street(rng, size)
    mask = Image.new("L", size, 0)
    image_draw, mask_draw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    horizon = int(height * rng.uniform(0.35, 0.5))
    vanish = width * rng.uniform(0.35, 0.65)
    lanes = [-0.6 + i * 0.6 + rng.uniform(-0.15, 0.15) for i in range(3) if rng.random() < 0.85]

    def strip(bottom_x: float, t0: float, t1: float, thickness: float) -> list[tuple[float, float]]:
        def at(t: float) -> tuple[float, float, float]:
            return vanish + (bottom_x - vanish) * t, horizon + (height - horizon) * t, 0.5 + thickness * t
        xa, ya, ha = at(t0)
        xb, yb, hb = at(t1)
        return [(xa - ha, ya), (xa + ha, ya), (xb + hb, yb), (xb - hb, yb)]

    for edge in (-1.0, 1.0):
        _polygon(image_draw, mask_draw, strip(vanish + edge * width * 0.8, 0.0, 1.0, width * 0.03),
                 palette["road_edge"], 3, rng)
    for offset in lanes:
        bottom_x = vanish + offset * width * 0.8
        if rng.random() < 0.5:
            _polygon(image_draw, mask_draw, strip(bottom_x, 0.05, 1.0, width * 0.012), palette["solid_line"], 1, rng)
        else:
            for t in np.arange(0.05, 1.0, 0.2):
                _polygon(image_draw, mask_draw, strip(bottom_x, t, t + 0.1, width * 0.016),
                         palette["dashed_line"], 2, rng)
    return _finish(rng, canvas, 5.0), mask


def _coco(scene: str, entries: list[tuple[str, int, list[tuple[int, Box]]]], size: tuple[int, int],
          seed: int) -> dict[str, object]:
    classes = DETECTION_CLASSES[scene]
    annotations: list[dict[str, object]] = []
    for image_id, (_, _, objects) in enumerate(entries, 1):
        for cls, (x0, y0, x1, y1) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    return {
        "info": {"description": f"synthetic adas_mini, scene {scene}", "version": "1", "seed": seed},
        "images": [{"id": i, "file_name": f"images/{name}.jpg", "width": size[0], "height": size[1]}
                   for i, (name, _, _) in enumerate(entries, 1)],
        "annotations": annotations,
        "categories": [{"id": i, "name": c.name, "supercategory": scene} for i, c in enumerate(classes, 1)],
    }


def _write(path: Path, data: bytes) -> None:
    """Write unless the file already holds these bytes: a re-run keeps mtimes, so packing stays up to date."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _remove_stale(folder: Path, scene: str, keep: set[str]) -> None:
    """Drop images of an earlier, larger run (only our own names), so the folder holds exactly this sample."""
    for sub in ("images", "masks"):
        if (folder / sub).is_dir():
            for entry in os.scandir(folder / sub):
                if entry.name.startswith(f"{scene}_") and os.path.splitext(entry.name)[0] not in keep:
                    os.unlink(entry.path)


def _make(task: tuple[Path, str, int, int, tuple[int, int]]) -> list[tuple[int, Box]]:
    """Draw and write image ``index`` of ``scene`` (and its mask); return its objects (detection)."""
    root, scene, index, seed, size = task
    folder, name = root / scene, image_name(scene, index)
    if SCENES[scene].kind == "detection":
        picture, objects = detection_image(scene, index, seed, size)
        _write(folder / "images" / f"{name}.jpg", _encoded(picture, "JPEG"))
        return objects
    draw_scene = default_parsing_image if scene == "default_parsing" else lane_parsing_image
    picture, mask = draw_scene(index, seed, size)
    _write(folder / "images" / f"{name}.jpg", _encoded(picture, "JPEG"))
    _write(folder / "masks" / f"{name}.png", _encoded(mask, "PNG"))
    return []


def generate(out: str | os.PathLike[str], images: int = DEFAULT_IMAGES, seed: int = 0,
             size: tuple[int, int] = DEFAULT_SIZE, scenes: Iterable[str] = SCENE_NAMES,
             progress: OnImage | None = None, jobs: int | None = None) -> SampleSummary:
    """Write the synthetic adas_mini under ``out`` (one folder per scene), drawing in ``jobs`` processes
    (default: all cores); return what was written. The bytes do not depend on ``jobs``."""
    if images < 1:
        raise UsageError(f"--images must be at least 1, got {images}")
    if min(size) < 32:
        raise UsageError(f"images must be at least 32×32 pixels, got {size[0]}×{size[1]}")
    scenes = list(scenes)
    unknown = [s for s in scenes if s not in SCENES]
    if unknown:
        raise UsageError(f"unknown scene(s) {', '.join(unknown)}; choose from {', '.join(SCENE_NAMES)}")
    root = Path(out)
    for scene in scenes:
        (root / scene / "images").mkdir(parents=True, exist_ok=True)
        if SCENES[scene].kind == "parsing":
            (root / scene / "masks").mkdir(exist_ok=True)
    tasks = [(root, scene, i, seed, size) for scene in scenes for i in range(images)]
    jobs = jobs or os.cpu_count() or 1
    objects: list[list[tuple[int, Box]]] = []
    if jobs == 1:
        made: Iterable[list[tuple[int, Box]]] = map(_make, tasks)
        for result in made:
            objects.append(result)
            if progress:
                progress(1)
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for result in pool.imap(_make, tasks, chunksize=16):
                objects.append(result)
                if progress:
                    progress(1)
    summary = SampleSummary(root, seed, size)
    for number, scene in enumerate(scenes):
        folder = root / scene
        if SCENES[scene].kind == "detection":
            entries = [(image_name(scene, i), i, objects[number * images + i]) for i in range(images)]
            coco = _coco(scene, entries, size, seed)
            _write(folder / "annotations.json", (json.dumps(coco, indent=1) + "\n").encode())
            summary.objects[scene] = sum(len(found) for _, _, found in entries)
        _remove_stale(folder, scene, {image_name(scene, i) for i in range(images)})
        summary.images[scene] = images
    return summary
