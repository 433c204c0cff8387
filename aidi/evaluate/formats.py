"""The ground-truth and predictions JSON files of phase 2 (docs/phase2.md), and their converters.

Boxes are in pixels, ``[xmin, ymin, xmax, ymax]`` on the original image; classes are named, and a file
carries its class list so a predictions file from another model version cannot be scored silently
against the wrong classes. Masks are PNG files (8-bit, one channel, pixel = class id, 255 = ignore)
whose paths are relative to the JSON file that names them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from aidi.api.errors import FieldError, SpecError, from_pydantic
from aidi.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)

GT_FORMAT = "aidi-gt/1"
PR_FORMAT = "aidi-pr/1"
TASKS = ("detection", "parsing")
IGNORE_LABEL = 255

Box = tuple[float, float, float, float]
StrictNumber = StrictInt | StrictFloat  # JSON numbers, not booleans or numeric strings
T = TypeVar("T")


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


# The two JSON formats' schemas (docs/phase2.md). Keys they do not name are left alone (a file may carry
# notes of its own); what they name must have the right shape, and every problem is reported at once.


def _check_box(value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    xmin, ymin, xmax, ymax = value
    if xmax < xmin or ymax < ymin:
        raise ValueError(f"expected xmin <= xmax and ymin <= ymax, got {list(value)} (is it COCO's [x, y, width, "
                         "height]? convert with xmax = x + width)")
    return value


PixelBox = Annotated[tuple[StrictNumber, StrictNumber, StrictNumber, StrictNumber], AfterValidator(_check_box)]
ClassRef = Annotated[StrictStr | StrictInt, Field(description="a class name from `classes`, or its index")]
ImageId = Annotated[StrictStr | StrictInt, Field(description="unique within the file")]


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _GtObjectDoc(_Item):
    class_: ClassRef = Field(alias="class")
    box: PixelBox = Field(description="[xmin, ymin, xmax, ymax] in pixels")
    ignore: bool = False


class _GtImageDoc(_Item):
    id: ImageId
    width: StrictInt = Field(ge=1)
    height: StrictInt = Field(ge=1)
    image: StrictStr | None = Field(None, description="the picture, relative to the JSON file")
    objects: list[_GtObjectDoc] = Field(default_factory=list)
    mask: StrictStr | None = Field(None, description="the mask PNG, relative to the JSON file (parsing)")


class _DetectionDoc(_Item):
    class_: ClassRef = Field(alias="class")
    box: PixelBox = Field(description="[xmin, ymin, xmax, ymax] in pixels")
    score: StrictNumber


class _PrImageDoc(_Item):
    id: ImageId
    detections: list[_DetectionDoc] = Field(default_factory=list)
    mask: StrictStr | None = Field(None, description="the mask PNG, relative to the JSON file (parsing)")
    source_id: StrictStr | StrictInt | None = None
    width: StrictInt | None = None
    height: StrictInt | None = None


class _FileDoc(_Item):
    task: Literal["detection", "parsing"]
    classes: list[Annotated[StrictStr, StringConstraints(min_length=1)]] = Field(
        min_length=1, description="the class names; an object's class is one of them")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        repeated = sorted({c for i, c in enumerate(classes) if c in classes[:i]})
        if repeated:
            raise ValueError(f"class names must be distinct; repeated: {', '.join(repeated)}")
        return classes


class _GtFileDoc(_FileDoc):
    format: Literal["aidi-gt/1"]
    ignore_label: StrictInt = IGNORE_LABEL
    images: list[_GtImageDoc]


class _PrFileDoc(_FileDoc):
    format: Literal["aidi-pr/1"]
    model: str | None = None
    images: list[_PrImageDoc]


DocModel = TypeVar("DocModel", bound=_Item)


def _validate(path: Path, data: dict[str, Any], model: type[DocModel]) -> DocModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(path), from_pydantic(exc, model)) from None


def _class_index(value: str | int, classes: Sequence[str]) -> int:
    if isinstance(value, str):
        if value not in classes:
            raise ValueError(f"unknown class {value!r}; the file's classes are {list(classes)}")
        return classes.index(value)
    if not 0 <= value < len(classes):
        raise ValueError(f"expected a class name from {list(classes)} (or its index), got {value!r}")
    return value


class _Problems:
    """The checks across fields (unique ids, class references, mask paths), gathered like pydantic's."""

    def __init__(self, path: Path) -> None:
        self.path, self.errors = path, list[FieldError]()

    def check(self, where: str, test: Callable[..., T], *args: Any) -> T | None:
        try:
            return test(*args)
        except ValueError as exc:
            self.errors.append(FieldError(where, str(exc)))
            return None

    def unique(self, where: str, image_id: str, seen: set[str]) -> None:
        if image_id in seen:
            self.errors.append(FieldError(where, f"image id {image_id!r} appears twice; ids must be unique"))
        seen.add(image_id)

    def raise_any(self) -> None:
        if self.errors:
            raise SpecError(str(self.path), self.errors)


def _relative(base: Path, value: str | None) -> Path:
    if not value:
        raise ValueError("expected a file path relative to the JSON file")
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
    doc = _validate(path, data, _GtFileDoc)
    problems, seen, images = _Problems(path), set[str](), list[GtImage]()
    for i, item in enumerate(doc.images):
        at = f"images[{i}]"
        problems.unique(f"{at}.id", str(item.id), seen)
        gt = GtImage(str(item.id), item.width, item.height,
                     image=_relative(path.parent, item.image) if item.image else None)
        if doc.task == "detection":
            for j, obj in enumerate(item.objects):
                cls = problems.check(f"{at}.objects[{j}].class", _class_index, obj.class_, doc.classes)
                gt.objects.append(GtObject(cls or 0, _floats(obj.box), obj.ignore))
        else:
            gt.mask = problems.check(f"{at}.mask", _relative, path.parent, item.mask)
        images.append(gt)
    problems.raise_any()
    return GroundTruth(doc.task, doc.classes, images, path, doc.ignore_label)


def load_predictions(path: str | Path) -> Predictions:
    """Read an ``aidi-pr/1`` file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != PR_FORMAT:
        raise FormatError(f"{path}: expected a predictions file with \"format\": \"{PR_FORMAT}\" (as `aidi predict` "
                          "writes it); see docs/phase2.md")
    doc = _validate(path, data, _PrFileDoc)
    problems, images = _Problems(path), dict[str, PrImage]()
    for i, item in enumerate(doc.images):
        at = f"images[{i}]"
        image_id = str(item.id)
        problems.unique(f"{at}.id", image_id, set(images))
        pr = PrImage(image_id, source_id=str(item.source_id) if item.source_id is not None else None)
        if item.width is not None and item.height is not None:
            pr.size = (item.width, item.height)
        if doc.task == "detection":
            for j, det in enumerate(item.detections):
                cls = problems.check(f"{at}.detections[{j}].class", _class_index, det.class_, doc.classes)
                pr.detections.append(Detection(cls or 0, _floats(det.box), float(det.score)))
        else:
            pr.mask = problems.check(f"{at}.mask", _relative, path.parent, item.mask)
        images[image_id] = pr
    problems.raise_any()
    return Predictions(doc.task, doc.classes, images, path, doc.model)


def _floats(box: tuple[float, float, float, float]) -> Box:
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    return xmin, ymin, xmax, ymax


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


class _CocoCategory(_Item):
    id: StrictInt
    name: StrictStr


class _CocoImage(_Item):
    id: ImageId
    width: StrictInt = Field(ge=1)
    height: StrictInt = Field(ge=1)
    file_name: StrictStr | None = None


def _non_negative_size(value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    if value[2] < 0 or value[3] < 0:
        raise ValueError(f"expected [x, y, width, height] with width, height >= 0, got {list(value)}")
    return value


class _CocoAnnotation(_Item):
    image_id: ImageId
    category_id: StrictInt
    bbox: Annotated[tuple[StrictNumber, StrictNumber, StrictNumber, StrictNumber],
                    AfterValidator(_non_negative_size)] = Field(description="[x, y, width, height] in pixels")
    iscrowd: int = 0
    ignore: int = 0


class _CocoDoc(_Item):
    images: list[_CocoImage]
    annotations: list[_CocoAnnotation]
    categories: list[_CocoCategory]


def gt_from_coco(data: dict[str, Any], path: Path | None = None, image_root: Path | None = None) -> GroundTruth:
    """A COCO annotation document (``bbox`` = ``[x, y, width, height]``) as detection ground truth.

    Classes are the categories in id order; ``iscrowd`` and ``ignore`` objects become ignored boxes (a
    detection on one is neither a hit nor a false positive, as in COCO).
    """
    where = Path(path or "COCO annotations")
    doc = _validate(where, data, _CocoDoc)
    categories = sorted(doc.categories, key=lambda c: c.id)
    classes = [c.name for c in categories]
    cat_index = {c.id: i for i, c in enumerate(categories)}
    root = image_root or (path.parent if path else Path("."))
    images = {item.id: GtImage(str(item.id), item.width, item.height,
                               image=(root / item.file_name) if item.file_name else None) for item in doc.images}
    problems = _Problems(where)
    for i, ann in enumerate(doc.annotations):
        at = f"annotations[{i}]"
        image = images.get(ann.image_id)
        if image is None:
            problems.errors.append(FieldError(f"{at}.image_id", f"no image with id {ann.image_id!r}"))
        if ann.category_id not in cat_index:
            problems.errors.append(FieldError(f"{at}.category_id", f"no category with id {ann.category_id!r}"))
        if image is not None and ann.category_id in cat_index:
            x, y, w, h = (float(v) for v in ann.bbox)
            image.objects.append(GtObject(cat_index[ann.category_id], (x, y, x + w, y + h),
                                          bool(ann.iscrowd or ann.ignore)))
    problems.raise_any()
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
