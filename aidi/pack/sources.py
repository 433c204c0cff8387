"""Reading a scene's raw folder into items: one per image, with its boxes or its mask path.

Problems found here (an unknown class, a malformed box) travel with the item, so one report lists
every bad input at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aidi.errors import NotFoundError, UsageError
from aidi.pack.pack_config import PackConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True, slots=True)
class Box:
    cls: int
    x: float
    y: float
    w: float
    h: float
    annotation: object


@dataclass(frozen=True, slots=True)
class Item:
    index: int                      # position in the source; becomes the record's id2
    name: str                       # relative path; decides the train/val split
    image: str
    mask: str | None = None
    width: int | None = None        # as the annotations declare it
    height: int | None = None
    boxes: tuple[Box, ...] = ()
    problems: tuple[str, ...] = ()


def source_dir(config: PackConfig) -> Path:
    root = Path(config.source)
    if not root.is_dir():
        raise NotFoundError(f"source folder {root} not found (scene {config.scene}); put adas_mini under data/, "
                            "or generate the synthetic one: aidi sample adas-mini --out data/adas_mini")
    return root


def in_val(name: str, val_fraction: float) -> bool:
    """Split by a hash of the name: stable when images are added or removed."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big") < val_fraction * 2**32


def _box(ann: dict, index: dict[object, str], classes: dict[str, int]) -> tuple[Box | None, str | None]:
    ann_id = ann.get("id", "?")
    name = index.get(ann.get("category_id"))
    if name is None:
        return None, f"annotation {ann_id}: category_id {ann.get('category_id')!r} is not in the file's categories"
    if name not in classes:
        return None, (f"annotation {ann_id}: unknown class {name!r}; the config's classes are "
                      f"{', '.join(classes)} — add it to `classes` or drop the annotation")
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox or ())  # None: the ValueError below
    except (TypeError, ValueError):
        return None, f"annotation {ann_id}: expected bbox [x, y, width, height], got {bbox!r}"
    return Box(classes[name], x, y, w, h, ann_id), None


def _load_coco(config: PackConfig) -> tuple[str, dict]:
    root = source_dir(config)
    path = root / config.annotations
    try:
        coco = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"annotations {path} not found; a detection scene needs a COCO-style JSON there "
                            "(or set `annotations` in the config)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
    if missing:
        raise UsageError(f"{path}: expected COCO lists {', '.join(missing)} (see docs/packing.md)")
    return str(root), coco


def detection_items(config: PackConfig) -> Iterator[Item]:
    root, coco = _load_coco(config)
    index = {c.get("id"): c.get("name") for c in coco["categories"]}
    classes = {name: i for i, name in enumerate(config.classes)}
    by_image: dict[object, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    del coco["annotations"]
    known = set()
    for position, entry in enumerate(coco["images"]):
        image_id = entry.get("id")
        known.add(image_id)
        name = str(entry.get("file_name", ""))
        boxes, problems = [], []
        for ann in by_image.get(image_id, ()):
            box, problem = _box(ann, index, classes)
            if box:
                boxes.append(box)
            if problem:
                problems.append(problem)
        yield Item(image_id if isinstance(image_id, int) and image_id >= 0 else position, name,
                   os.path.join(root, name), width=entry.get("width"), height=entry.get("height"),
                   boxes=tuple(boxes), problems=tuple(problems))
    orphans = sorted(str(i) for i in by_image if i not in known)
    if orphans:
        yield Item(-1, config.annotations, os.path.join(root, config.annotations),
                   problems=(f"annotations refer to image ids not in `images`: {', '.join(orphans[:10])}"
                             + (f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""),))


def _parsing_names(config: PackConfig) -> list[str]:
    images = source_dir(config) / config.images
    if not images.is_dir():
        raise NotFoundError(f"image folder {images} not found; a parsing scene needs images/ and masks/ "
                            "(or set `images` / `masks` in the config)")
    return sorted(e.name for e in os.scandir(images) if e.name.lower().endswith(IMAGE_SUFFIXES))


def _mask_name(config: PackConfig, image: str) -> str:
    return f"{config.masks}/{os.path.splitext(image)[0]}.png"


def parsing_items(config: PackConfig) -> Iterator[Item]:
    root = str(source_dir(config))
    for position, name in enumerate(_parsing_names(config)):
        yield Item(position, f"{config.images}/{name}", os.path.join(root, config.images, name),
                   mask=os.path.join(root, _mask_name(config, name)))


def items(config: PackConfig) -> Iterator[Item]:
    return detection_items(config) if config.task == "detection" else parsing_items(config)


def input_names(config: PackConfig) -> list[str]:
    """Every input file of the scene, relative to its source folder (cheaper than building items)."""
    if config.task == "detection":
        return [str(entry.get("file_name", "")) for entry in _load_coco(config)[1]["images"]]
    names = _parsing_names(config)
    return [f"{config.images}/{n}" for n in names] + [_mask_name(config, n) for n in names]


def fingerprint(config: PackConfig) -> tuple[str, int]:
    """A digest of everything the output depends on (settings, annotations, each input's size and mtime),
    and the number of images."""
    names = input_names(config)
    digest = hashlib.sha256(config.digest().encode())
    if config.task == "detection":
        digest.update(hashlib.sha256((Path(config.source) / config.annotations).read_bytes()).digest())
    root = config.source
    # Relative names: the same data reached by another path (or a moved tree) is still up to date.
    for name in names:
        try:
            stat = os.stat(os.path.join(root, name))
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest(), len(names) if config.task == "detection" else len(names) // 2
