"""The HTML report people read: one self-contained page (inline CSS and JS, no network) beside the
images it shows, copied into ``images/`` (and colourised masks into ``masks/`` for parsing)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from aidi.evaluate.detection import ImageMatches
from aidi.evaluate.formats import GroundTruth, Predictions

PLACEHOLDER = "/*REPORT_DATA*/"


def palette() -> np.ndarray:
    """The PASCAL VOC colour map (class i → a distinct colour by bit interleaving); 255 = white (ignore)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    colours[255] = (255, 255, 255)
    return colours


def _safe_name(image_id: str) -> str:
    # A hash suffix keeps ids apart that differ only in characters a file name cannot hold ("a/b", "a_b").
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", image_id) or "_"
    return safe if safe == image_id else f"{safe}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}"


def _copy_image(src: Path | None, images_dir: Path, image_id: str) -> str | None:
    """Put the picture beside the report (a hard link when the file system allows, else a copy)."""
    if src is None or not src.is_file():
        return None
    images_dir.mkdir(parents=True, exist_ok=True)
    target = images_dir / f"{_safe_name(image_id)}{src.suffix.lower() or '.jpg'}"
    target.unlink(missing_ok=True)
    try:
        os.link(src, target)
    except OSError:
        shutil.copyfile(src, target)
    return f"{images_dir.name}/{target.name}"


def detection_images(gt: GroundTruth, matches: list[ImageMatches], out_dir: Path) -> list[dict[str, Any]]:
    items = []
    for image, match in zip(gt.images, matches, strict=True):
        items.append({
            "id": image.id, "w": image.width, "h": image.height,
            "src": _copy_image(image.image, out_dir / "images", image.id),
            "gts": [[g.cls, *(round(v, 1) for v in g.box), g.ignore, g.matched_score] for g in match.gts],
            "dets": [[d.cls, *(round(v, 1) for v in d.box), round(d.score, 4), d.status] for d in match.detections],
        })
    return items


def parsing_images(gt: GroundTruth, pr: Predictions, per_image: list[dict[str, Any]],
                   out_dir: Path) -> list[dict[str, Any]]:
    from PIL import Image

    from aidi.evaluate.parsing import read_mask

    colours = palette()
    masks_dir = out_dir / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    class_map = np.full(256, 255, dtype=np.uint8)
    for i, name in enumerate(pr.classes):
        class_map[i] = gt.classes.index(name)
    items = []
    for image, stats in zip(gt.images, per_image, strict=True):
        name = _safe_name(image.id)
        gt_path, pr_path = image.mask, pr.images[image.id].mask
        if gt_path is None or pr_path is None:
            continue  # evaluation refused such a pair already; nothing to draw
        gt_mask = read_mask(gt_path, image.id)
        pr_mask = class_map[read_mask(pr_path, image.id)]
        wrong = (gt_mask != pr_mask) & (gt_mask != gt.ignore_label)
        error = np.where(wrong[..., None], np.array([225, 29, 72], np.uint8), np.array([40, 40, 40], np.uint8))
        error[gt_mask == gt.ignore_label] = (255, 255, 255)
        for suffix, pixels in (("gt", colours[gt_mask]), ("pr", colours[pr_mask]), ("err", error)):
            Image.fromarray(pixels).save(masks_dir / f"{name}.{suffix}.png", optimize=True)
        items.append({**stats, "src": _copy_image(image.image, out_dir / "images", image.id),
                      "gt": f"masks/{name}.gt.png", "pr": f"masks/{name}.pr.png", "err": f"masks/{name}.err.png"})
    return items


def write_report(out_dir: Path, results: dict[str, Any], gt: GroundTruth, pr: Predictions,
                 matches: list[ImageMatches] | None) -> Path:
    """Write ``report.html`` (and its pictures) into ``out_dir``; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if results["task"] == "detection":
        images = detection_images(gt, matches or [], out_dir)
        threshold = results["score_threshold"]
        meta = (f"detection · IoU ≥ {results['iou_threshold']} · counts at score ≥ {threshold} "
                f"· {len(images)} images")
    else:
        images = parsing_images(gt, pr, results["images"], out_dir)
        threshold = 0.5
        miou = results["summary"]["miou"]
        meta = f"parsing · {len(images)} images · mIoU " + ("–" if miou is None else f"{miou:.4f}")
    meta += f" · ground truth {gt.source} · predictions {pr.source}" + (f" · model {pr.model}" if pr.model else "")
    data = {"task": results["task"], "meta": meta, "threshold": threshold, "classNames": gt.classes,
            "summary": results["summary"], "classes": results["classes"], "images": images}
    # JSON inside <script> must not close the element early.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    template = resources.files("aidi.evaluate").joinpath("report_template.html").read_text(encoding="utf-8")
    path = out_dir / "report.html"
    path.write_text(template.replace(PLACEHOLDER, payload), encoding="utf-8")
    return path
