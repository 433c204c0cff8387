"""``aidi predict``: run an exported model over a packed rec file and write an ``aidi-pr/1`` predictions file.

The model is an export prefix (``fusion-bn-c2-export-last``, the GPU prediction model, or
``int-inference-export-last``): its graph has one output per branch, in the training config's task
order. The rec's ``manifest.json`` (written by ``aidi pack``) names its scene; the branch that trained on
that scene is the one read, and only that scene's classes are reported (a branch may concatenate the
classes of several scenes). Images go in exactly as in validation: resized to the config's
``input_size``, normalised to [-1, 1]; the decoding and NMS are the trainer's own
(:func:`aidi_trainer.validation.decode_detections`), and boxes are mapped back to the original pixels.
Parsing logits are upsampled bilinearly to the image's size, then arg-maxed into a PNG mask.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import mxnet as mx
import numpy as np

from aidi import recordio
from aidi.errors import NotFoundError, UsageError
from aidi.evaluate.formats import PR_FORMAT, iter_rec, write_json
from aidi.progress import Progress
from aidi_trainer.data import Crop, decode_image, normalise
from aidi_trainer.model import DET
from aidi_trainer.train_config import TaskConfig, TrainConfig, load_config
from aidi_trainer.validation import decode_detections

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("configs/4pe_resize/multitask.py")
BATCH = 16


@dataclass
class Branch:
    """Which output of the graph serves a scene, and where the scene's classes sit in that branch."""

    index: int
    task: TaskConfig
    scene: str
    classes: list[str]
    offset: int


def load_model(prefix: str | Path, ctx: mx.Context) -> mx.gluon.SymbolBlock:
    prefix = str(prefix)
    for suffix in ("-symbol.json", "-0000.params"):
        if not Path(prefix + suffix).is_file():
            raise NotFoundError(f"{prefix}{suffix} does not exist; --model is an export prefix such as "
                                "output/fusion-bn-c2-export-last (its -symbol.json and -0000.params beside it)")
    with _quiet_mxnet():
        return mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params", ctx=ctx)


class _quiet_mxnet:
    """SymbolBlock.imports warns about every int8/int32 parameter of the integer model; those are intended."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._catch.__exit__(kind, exc, tb)


def scene_of(rec: Path) -> dict[str, Any]:
    manifest = rec.parent / "manifest.json"
    if not manifest.is_file():
        raise NotFoundError(f"{manifest} does not exist; predict needs the manifest `aidi pack` writes beside the "
                            "rec (it names the scene and its classes), or pass --scene")
    return json.loads(manifest.read_text(encoding="utf-8"))


def pick_branch(config: TrainConfig, scene: str, task: str | None = None) -> Branch:
    names = list(config.tasks)
    candidates = [name for name in names if scene in config.tasks[name].scenes]
    if task:
        if task not in config.tasks:
            raise UsageError(f"--task {task!r} is not a branch of {config.path} ({', '.join(names)})")
        if scene not in config.tasks[task].scenes:
            raise UsageError(f"branch {task} did not train on scene {scene!r} (it reads "
                             f"{', '.join(config.tasks[task].scenes)})")
        candidates = [task]
    if not candidates:
        raise UsageError(f"no branch of {config.path} trained on scene {scene!r}; its scenes: "
                         + ", ".join(s for t in config.tasks.values() for s in t.scenes))
    chosen = config.tasks[candidates[0]]
    offset = 0
    for name, classes in chosen.scenes.items():
        if name == scene:
            return Branch(names.index(chosen.name), chosen, scene, list(classes), offset)
        offset += len(classes)
    raise AssertionError("unreachable: the scene is in the branch")


def _batches(rec: Path, size: int) -> Any:
    batch: list[tuple[int, bytes]] = []
    for key, record in iter_rec(rec):
        batch.append((key, record))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _image_of(record: bytes) -> bytes:
    header = recordio.unpack(record)[0]
    if header.flag == recordio.PARSING_FLAG:
        return recordio.unpack_parsing(record).image
    return recordio.unpack_detection(record).image


def predict(model: str | Path, rec: str | Path, out: str | Path, config_path: str | Path = DEFAULT_CONFIG,
            task: str | None = None, scene: str | None = None, ctx: str = "cpu", score_min: float = 0.05,
            top_k: int = 100, batch_size: int = BATCH) -> dict[str, Any]:
    """Predict every record of ``rec``; write ``out`` (and ``<out stem>_masks/`` for parsing)."""
    rec, out = Path(rec), Path(out)
    if not rec.is_file():
        raise NotFoundError(f"{rec}: no such rec file")
    config = load_config(config_path)
    manifest = scene_of(rec) if scene is None else {"scene": scene}
    branch = pick_branch(config, manifest["scene"], task)
    context = mx.cpu() if ctx == "cpu" else mx.gpu(int(ctx))
    net = load_model(model, context)
    stride = 1
    for _, s in config.backbone:
        stride *= s
    kind = branch.task.kind
    masks_dir = out.parent / f"{out.stem}_masks"
    images: list[dict[str, Any]] = []
    started = time.monotonic()
    idx = rec.with_suffix(".idx")
    total = len(recordio.read_index(idx)) if idx.is_file() else None
    with Progress(total, f"predict {branch.scene}", unit="img") as bar:
        for batch in _batches(rec, batch_size):
            pictures = [decode_image(_image_of(record), f"{rec} record {key}") for key, record in batch]
            data = np.stack([normalise(Crop.identity(p.shape[1], p.shape[0]).apply(p, config.input_size,
                                                                                  cv2.INTER_LINEAR))
                             for p in pictures])
            outputs = net(mx.nd.array(data, ctx=context))
            output = outputs[branch.index] if isinstance(outputs, list | tuple) else outputs
            if kind == DET:
                decoded = decode_detections(output, stride, top_k=top_k, score_threshold=score_min)
                for (key, record), picture, dets in zip(batch, pictures, decoded, strict=True):
                    images.append({**_image_fields(key, record, picture),
                                   "detections": _scene_detections(dets, branch, picture.shape, config.input_size)})
            else:
                logits = output.asnumpy()
                for (key, record), picture, logit in zip(batch, pictures, logits, strict=True):
                    mask_path = masks_dir / f"{key}.png"
                    _write_mask(mask_path, logit, (picture.shape[0], picture.shape[1]))
                    images.append({**_image_fields(key, record, picture),
                                   "mask": mask_path.relative_to(out.parent).as_posix()})
            bar.update(len(batch))
    doc = {"format": PR_FORMAT, "task": "detection" if kind == DET else "parsing", "classes": branch.classes,
           "model": str(model), "branch": branch.task.name, "scene": branch.scene, "images": images}
    write_json(out, doc)
    seconds = time.monotonic() - started
    count = sum(len(i.get("detections", [])) for i in images)
    return {"out": str(out), "images": len(images), "detections": count if kind == DET else None,
            "branch": branch.task.name, "scene": branch.scene, "seconds": seconds,
            "images_per_second": len(images) / seconds if seconds else None}


def _image_fields(key: int, record: bytes, picture: np.ndarray) -> dict[str, Any]:
    """The image's id (its record key), its source id (the packer's id2: a detection image's COCO id) and the
    size predicted on, so predictions can also be scored against the scene's COCO annotations."""
    return {"id": str(key), "source_id": str(recordio.unpack(record)[0].id2), "width": int(picture.shape[1]),
            "height": int(picture.shape[0])}


def _scene_detections(dets: np.ndarray, branch: Branch, shape: tuple[int, ...],
                      input_size: tuple[int, int]) -> list[dict[str, Any]]:
    """Branch rows ``[cls, score, x0, y0, x1, y1]`` at input size → the scene's classes, original pixels."""
    height, width = shape[:2]
    sx, sy = input_size[0] / width, input_size[1] / height
    found = []
    for cls, score, x0, y0, x1, y1 in dets.tolist():
        local = int(cls) - branch.offset
        if not 0 <= local < len(branch.classes):
            continue  # another scene's class of the same branch
        box = [min(max(x0 / sx, 0.0), width), min(max(y0 / sy, 0.0), height),
               min(max(x1 / sx, 0.0), width), min(max(y1 / sy, 0.0), height)]
        if box[2] > box[0] and box[3] > box[1]:
            found.append({"class": branch.classes[local], "box": [round(v, 2) for v in box],
                          "score": round(float(score), 5)})
    return found


def _write_mask(path: Path, logits: np.ndarray, size: tuple[int, int]) -> None:
    height, width = size
    upsampled = np.stack([cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR)
                          for channel in logits])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), upsampled.argmax(axis=0).astype(np.uint8)):
        raise OSError(f"could not write {path}")
