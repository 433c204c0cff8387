"""The ground-truth and predictions JSON files of phase 2 (docs/phase2.md), and their converters.

Boxes are in pixels, ``[xmin, ymin, xmax, ymax]`` on the original image; classes are named, and a file
carries its class list so a predictions file from another model version cannot be scored silently
against the wrong classes. Masks are PNG files (8-bit, one channel, pixel = class id, 255 = ignore)
whose paths are relative to the JSON file that names them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidi.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)

GT_FORMAT = "aidi-gt/1"
PR_FORMAT = "aidi-pr/1"
TASKS = ("detection", "parsing")
IGNORE_LABEL = 255

Box = tuple[float, float, float, float]


class FormatError(UsageError):
    """A ground-truth or predictions file that does not follow docs/phase2.md."""


@dataclass
class GtObject:
    cls: int
    box: Box
    ignore: bool = False


@dataclass
class GtImage:
    id: str
    width: int
    height: int
    image: Path | None = None          # the picture, for the report
    objects: list[GtObject] = field(default_factory=list)
    mask: Path | None = None


@dataclass
class GroundTruth:
    task: str
    classes: list[str]
    images: list[GtImage]
    source: Path | None = None
    ignore_label: int = IGNORE_LABEL
    coco: bool = False          # ids are COCO image ids (see align_to_coco)


@dataclass
class Detection:
    cls: int
    box: Box
    score: float


@dataclass
class PrImage:
    id: str
    detections: list[Detection] = field(default_factory=list)
    mask: Path | None = None
    source_id: str | None = None        # the packed image's source id (a detection rec's id2: its COCO id)
    size: tuple[int, int] | None = None  # (width, height) of the image predicted on


@dataclass
class Predictions:
    task: str
    classes: list[str]
    images: dict[str, PrImage]
    source: Path | None = None
    model: str | None = None


# ------------------------------------------------------------------------------------------ reading


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from exc


def _require(where: str, data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise FormatError(f"{where}: missing field '{key}' (see docs/phase2.md)")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FormatError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _box(where: str, value: Any) -> Box:
    if (not isinstance(value, list | tuple) or len(value) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise FormatError(f"{where}: expected [xmin, ymin, xmax, ymax] in pixels, got {value!r:.80}")
    xmin, ymin, xmax, ymax = (float(v) for v in value)
    if xmax < xmin or ymax < ymin:
        raise FormatError(f"{where}: expected xmin <= xmax and ymin <= ymax, got {list(value)} "
                          "(is it COCO's [x, y, width, height]? convert with xmax = x + width)")
    return xmin, ymin, xmax, ymax


def _class_index(where: str, value: Any, classes: Sequence[str]) -> int:
    if isinstance(value, str):
        try:
            return classes.index(value)
        except ValueError:
            raise FormatError(f"{where}: unknown class {value!r}; the file's classes are {list(classes)}") from None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    raise FormatError(f"{where}: expected a class name from {list(classes)} (or its index), got {value!r}")


def _classes(where: str, data: dict[str, Any]) -> list[str]:
    classes = _require(where, data, "classes", list)
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise FormatError(f"{where}.classes: expected a non-empty list of distinct class names, got {classes!r:.80}")
    return classes


def _task(where: str, data: dict[str, Any]) -> str:
    task = _require(where, data, "task", str)
    if task not in TASKS:
        raise FormatError(f"{where}.task: expected one of {list(TASKS)}, got {task!r}")
    return task


def _relative(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: expected a file path relative to the JSON file, got {value!r}")
    return (base / value) if not Path(value).is_absolute() else Path(value)


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read an ``aidi-gt/1`` file, or a COCO annotation file (converted on the fly, detection only)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and "annotations" in data and "categories" in data:
        return gt_from_coco(data, path)
    if not isinstance(data, dict) or data.get("format") != GT_FORMAT:
        raise FormatError(f"{path}: expected a ground-truth file with \"format\": \"{GT_FORMAT}\" or a COCO "
                          "annotation file (images, annotations, categories); see docs/phase2.md")
    where = str(path)
    task, classes = _task(where, data), _classes(where, data)
    ignore_label = data.get("ignore_label", IGNORE_LABEL)
    base = path.parent
    images: list[GtImage] = []
    seen: set[str] = set()
    for i, item in enumerate(_require(where, data, "images", list)):
        at = f"{where}: images[{i}]"
        if not isinstance(item, dict):
            raise FormatError(f"{at}: expected an object, got {item!r:.60}")
        image_id = str(_require(at, item, "id", (str, int)))
        if image_id in seen:
            raise FormatError(f"{at}.id: image id {image_id!r} appears twice; ids must be unique")
        seen.add(image_id)
        gt = GtImage(image_id, int(_require(at, item, "width", int)), int(_require(at, item, "height", int)))
        if item.get("image"):
            gt.image = _relative(base, item["image"], f"{at}.image")
        if task == "detection":
            for j, obj in enumerate(item.get("objects", [])):
                ot = f"{at}.objects[{j}]"
                if not isinstance(obj, dict):
                    raise FormatError(f"{ot}: expected an object with class and box, got {obj!r:.60}")
                gt.objects.append(GtObject(_class_index(f"{ot}.class", obj.get("class"), classes),
                                           _box(f"{ot}.box", obj.get("box")), bool(obj.get("ignore", False))))
        else:
            gt.mask = _relative(base, item.get("mask"), f"{at}.mask")
        images.append(gt)
    return GroundTruth(task, classes, images, path, int(ignore_label))


def load_predictions(path: str | Path) -> Predictions:
    """Read an ``aidi-pr/1`` file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != PR_FORMAT:
        raise FormatError(f"{path}: expected a predictions file with \"format\": \"{PR_FORMAT}\" (as `aidi predict` "
                          "writes it); see docs/phase2.md")
    where = str(path)
    task, classes = _task(where, data), _classes(where, data)
    images: dict[str, PrImage] = {}
    for i, item in enumerate(_require(where, data, "images", list)):
        at = f"{where}: images[{i}]"
        if not isinstance(item, dict):
            raise FormatError(f"{at}: expected an object, got {item!r:.60}")
        image_id = str(_require(at, item, "id", (str, int)))
        if image_id in images:
            raise FormatError(f"{at}.id: image id {image_id!r} appears twice; ids must be unique")
        pr = PrImage(image_id, source_id=str(item["source_id"]) if item.get("source_id") is not None else None)
        if isinstance(item.get("width"), int) and isinstance(item.get("height"), int):
            pr.size = (item["width"], item["height"])
        if task == "detection":
            for j, det in enumerate(item.get("detections", [])):
                dt = f"{at}.detections[{j}]"
                if not isinstance(det, dict):
                    raise FormatError(f"{dt}: expected an object with class, box and score, got {det!r:.60}")
                score = _require(dt, det, "score", (int, float))
                pr.detections.append(Detection(_class_index(f"{dt}.class", det.get("class"), classes),
                                               _box(f"{dt}.box", det.get("box")), float(score)))
        else:
            pr.mask = _relative(path.parent, item.get("mask"), f"{at}.mask")
        images[image_id] = pr
    return Predictions(task, classes, images, path, data.get("model"))


# ------------------------------------------------------------------------------------------ writing


def gt_to_json(gt: GroundTruth, base: Path) -> dict[str, Any]:
    """The ``aidi-gt/1`` document for ``gt``, paths made relative to ``base`` (the folder of the file)."""
    images = []
    for img in gt.images:
        item: dict[str, Any] = {"id": img.id, "width": img.width, "height": img.height}
        if img.image is not None:
            item["image"] = _rel(img.image, base)
        if gt.task == "detection":
            item["objects"] = [{"class": gt.classes[o.cls], "box": [round(v, 3) for v in o.box],
                                **({"ignore": True} if o.ignore else {})} for o in img.objects]
        else:
            item["mask"] = _rel(img.mask, base) if img.mask else None
        images.append(item)
    doc: dict[str, Any] = {"format": GT_FORMAT, "task": gt.task, "classes": gt.classes}
    if gt.task == "parsing":
        doc["ignore_label"] = gt.ignore_label
    doc["images"] = images
    return doc


def predictions_to_json(pr: Predictions, base: Path) -> dict[str, Any]:
    images = []
    for img in pr.images.values():
        item: dict[str, Any] = {"id": img.id}
        if img.source_id is not None:
            item["source_id"] = img.source_id
        if img.size:
            item["width"], item["height"] = img.size
        if pr.task == "detection":
            item["detections"] = [{"class": pr.classes[d.cls], "box": [round(v, 2) for v in d.box],
                                   "score": round(d.score, 5)} for d in img.detections]
        else:
            item["mask"] = _rel(img.mask, base) if img.mask else None
        images.append(item)
    doc: dict[str, Any] = {"format": PR_FORMAT, "task": pr.task, "classes": pr.classes}
    if pr.model:
        doc["model"] = pr.model
    doc["images"] = images
    return doc


def write_json(path: Path, doc: Any) -> None:
    """Write through a temporary name so a crash never leaves a half-written file under the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _rel(target: Path, base: Path) -> str:
    try:
        return target.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(target.resolve())


# ------------------------------------------------------------------------------------------ converters


def gt_from_coco(data: dict[str, Any], path: Path | None = None, image_root: Path | None = None) -> GroundTruth:
    """A COCO annotation document (``bbox`` = ``[x, y, width, height]``) as detection ground truth.

    Classes are the categories in id order; ``iscrowd`` and ``ignore`` objects become ignored boxes (a
    detection on one is neither a hit nor a false positive, as in COCO).
    """
    where = str(path or "COCO annotations")
    categories = sorted(_require(where, data, "categories", list), key=lambda c: c["id"])
    classes = [str(c["name"]) for c in categories]
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    root = image_root or (path.parent if path else Path("."))
    images: dict[Any, GtImage] = {}
    for i, item in enumerate(_require(where, data, "images", list)):
        at = f"{where}: images[{i}]"
        image_id = _require(at, item, "id", (int, str))
        file_name = item.get("file_name")
        images[image_id] = GtImage(str(image_id), int(_require(at, item, "width", int)),
                                   int(_require(at, item, "height", int)),
                                   image=(root / file_name) if file_name else None)
    for i, ann in enumerate(_require(where, data, "annotations", list)):
        at = f"{where}: annotations[{i}]"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise FormatError(f"{at}.image_id: no image with id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cat_index:
            raise FormatError(f"{at}.category_id: no category with id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise FormatError(f"{at}.bbox: expected [x, y, width, height], got {bbox!r:.60}")
        x, y, w, h = (float(v) for v in bbox)
        image.objects.append(GtObject(cat_index[ann["category_id"]], _box(f"{at}.bbox", [x, y, x + w, y + h]),
                                      bool(ann.get("iscrowd", 0) or ann.get("ignore", 0))))
    return GroundTruth("detection", classes, list(images.values()), path, coco=True)


def align_to_coco(gt: GroundTruth, pr: Predictions) -> tuple[GroundTruth, Predictions]:
    """Score predictions made on a packed rec against the scene's COCO annotations.

    `aidi predict` names images by record key and also writes each one's ``source_id`` (the COCO id the
    packer keeps in the record's ``id2``) and the size it predicted on. Here predictions are re-keyed by
    COCO id, boxes scaled back when the packer resized, and the ground truth narrowed to the predicted
    images (the annotations cover train and val; the predictions one split).
    """
    gt_by_id = {image.id: image for image in gt.images}
    if not set(pr.images) & set(gt_by_id) or all(p.source_id for p in pr.images.values()):
        if not all(p.source_id for p in pr.images.values()):
            raise FormatError(f"{pr.source}: its image ids match none of {gt.source}'s COCO ids and it has no "
                              "source_id per image; predict with `aidi predict` (which writes them) or use the "
                              ".rec as ground truth")
        rekeyed: dict[str, PrImage] = {}
        for image in pr.images.values():
            target = gt_by_id.get(str(image.source_id))
            if target is None:
                raise FormatError(f"{pr.source}: image {image.id} has source_id {image.source_id}, which is not an "
                                  f"image id of {gt.source}; were they packed from other annotations?")
            if image.size and image.size != (target.width, target.height):
                sx, sy = target.width / image.size[0], target.height / image.size[1]
                image.detections = [Detection(d.cls, (d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy),
                                              d.score) for d in image.detections]
            rekeyed[target.id] = PrImage(target.id, image.detections, image.mask, image.source_id, image.size)
        pr = Predictions(pr.task, pr.classes, rekeyed, pr.source, pr.model)
    kept = [image for image in gt.images if image.id in pr.images]
    if len(kept) < len(gt.images):
        log.info("%s: evaluating the %d images that %s predicted, of the %d annotated", gt.source, len(kept),
                 pr.source, len(gt.images))
    return GroundTruth(gt.task, gt.classes, kept, gt.source, gt.ignore_label, coco=True), pr


def read_scene_classes(rec_path: Path) -> list[str] | None:
    """The class list from the packer's manifest JSON beside a rec file, when there is one."""
    for candidate in sorted(rec_path.parent.glob("*.json")):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("classes"), list) and data["classes"]:
            return [str(c) for c in data["classes"]]
    return None


def iter_rec(rec_path: Path) -> Iterator[tuple[int, bytes]]:
    """``(key, record)`` for every record of a rec file, in ``.idx`` order when there is one."""
    from aidi import recordio

    if not rec_path.is_file():
        raise NotFoundError(f"{rec_path}: no such rec file")
    idx_path = rec_path.with_suffix(".idx")
    if idx_path.is_file():
        with recordio.IndexedRecordReader(rec_path, idx_path) as reader:
            for key in sorted(recordio.read_index(idx_path)):
                yield key, reader.read_idx(key)
    else:
        with recordio.RecordReader(rec_path) as reader:
            yield from enumerate(reader)


def record_is_parsing(record: bytes) -> bool:
    from aidi import recordio

    return recordio.unpack(record)[0].flag == recordio.PARSING_FLAG


def gt_from_rec(rec_path: str | Path, out_json: str | Path, classes: Sequence[str] | None = None,
                with_images: bool = True) -> GroundTruth:
    """Write the ground truth of a packed rec file: ``out_json`` plus images/ and masks/ beside it.

    Image ids are the record keys of the ``.idx`` file (what `aidi predict` writes for the same rec).
    """
    import io

    from PIL import Image

    from aidi import recordio

    rec_path, out_json = Path(rec_path), Path(out_json)
    classes = list(classes) if classes else read_scene_classes(rec_path)
    out_dir = out_json.parent
    stem = out_json.stem
    images: list[GtImage] = []
    task = None
    for key, record in iter_rec(rec_path):
        parsing = record_is_parsing(record)
        task = task or ("parsing" if parsing else "detection")
        if (task == "parsing") != parsing:
            raise FormatError(f"{rec_path}: record {key} is a {'parsing' if parsing else 'detection'} record in a "
                              f"{task} rec; one rec holds one scene")
        image_path = out_dir / f"{stem}_images" / f"{key}.jpg"
        if parsing:
            rec = recordio.unpack_parsing(record)
            jpeg = rec.image
            width, height = Image.open(io.BytesIO(jpeg)).size
            mask_path = out_dir / f"{stem}_masks" / f"{key}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            mask_path.write_bytes(rec.mask)
            gt = GtImage(str(key), width, height, mask=mask_path)
        else:
            det = recordio.unpack_detection(record)
            jpeg, width, height = det.image, det.width, det.height
            gt = GtImage(str(key), width, height)
            for cls, xmin, ymin, xmax, ymax in det.objects:
                gt.objects.append(GtObject(int(cls), (xmin * width, ymin * height, xmax * width, ymax * height)))
        if with_images:
            image_path.parent.mkdir(parents=True, exist_ok=True)
            image_path.write_bytes(jpeg)
            gt.image = image_path
        images.append(gt)
    if task is None:
        raise FormatError(f"{rec_path}: the rec file holds no records")
    if classes is None:
        top = max((o.cls for g in images for o in g.objects), default=0) if task == "detection" else 0
        classes = [f"class{i}" for i in range(top + 1)]
        log.warning("%s: no manifest with class names beside it; naming classes class0..class%d", rec_path, top)
    used = max((o.cls for g in images for o in g.objects), default=-1)
    if used >= len(classes):
        raise FormatError(f"{rec_path}: records use class index {used} but only {len(classes)} classes are named "
                          f"({classes}); pass the scene's class list")
    result = GroundTruth(task, list(classes), images, out_json)
    write_json(out_json, gt_to_json(result, out_dir))
    return result
