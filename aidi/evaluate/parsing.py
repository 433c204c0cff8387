"""Parsing (semantic segmentation) metrics: a confusion matrix over every labelled pixel, per-class IoU, mIoU.

IoU of class c = TP / (TP + FP + FN) over all images together (not a mean of per-image IoUs, which
overweights small images); pixels labelled ``ignore_label`` in the ground truth are left out. mIoU is
the mean over classes present in the ground truth or the predictions (a class absent from both has no
IoU), the convention of the Cityscapes and VOC benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aidi.errors import NotFoundError
from aidi.evaluate.formats import FormatError, GroundTruth, Predictions


def read_mask(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise NotFoundError(f"{what}: mask file {path} does not exist")
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise FormatError(f"{what}: {path} is a {img.mode} image; a mask is an 8-bit single-channel PNG "
                              "(pixel = class id)")
        return np.asarray(img, dtype=np.uint8)


def confusion(gt_mask: np.ndarray, pr_mask: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """``num_classes`` × ``num_classes`` counts, rows = ground truth, columns = prediction."""
    valid = (gt_mask != ignore_label) & (gt_mask < num_classes)
    # A predicted id outside the class list is wrong for every class: count it as a miss, not a crash.
    pr = np.where(pr_mask < num_classes, pr_mask, num_classes).astype(np.int64)
    flat = gt_mask[valid].astype(np.int64) * (num_classes + 1) + pr[valid]
    counts = np.bincount(flat, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)[:, :num_classes]


def iou_from_confusion(matrix: np.ndarray, extra_fn: np.ndarray | None = None) -> list[float | None]:
    tp = np.diag(matrix).astype(float)
    fn = matrix.sum(axis=1) - tp + (extra_fn if extra_fn is not None else 0)
    fp = matrix.sum(axis=0) - tp
    union = tp + fp + fn
    return [float(t / u) if u else None for t, u in zip(tp, union, strict=True)]


def evaluate_parsing(gt: GroundTruth, pr: Predictions) -> dict[str, Any]:
    n = len(gt.classes)
    class_map = np.full(256, 255, dtype=np.uint8)
    for i, name in enumerate(pr.classes):
        class_map[i] = gt.classes.index(name)
    total = np.zeros((n, n), dtype=np.int64)
    out_of_range = np.zeros(n, dtype=np.int64)
    images = []
    for image in gt.images:
        pr_image = pr.images.get(image.id)
        if pr_image is None or pr_image.mask is None:
            raise FormatError(f"{pr.source}: no predicted mask for image {image.id!r}; predict every image of the "
                              "ground truth")
        if image.mask is None:
            raise FormatError(f"{gt.source}: image {image.id!r} has no mask; parsing ground truth names one per image")
        gt_mask = read_mask(image.mask, f"{gt.source}: image {image.id}")
        pr_mask = class_map[read_mask(pr_image.mask, f"{pr.source}: image {image.id}")]
        if gt_mask.shape != pr_mask.shape:
            raise FormatError(f"{pr.source}: image {image.id}: predicted mask is {pr_mask.shape[1]}x{pr_mask.shape[0]}"
                              f", the ground truth {gt_mask.shape[1]}x{gt_mask.shape[0]}; predict at the image's size")
        matrix = confusion(gt_mask, pr_mask, n, gt.ignore_label)
        valid = gt_mask != gt.ignore_label
        wrong_ids = np.bincount(gt_mask[valid & (pr_mask >= n)], minlength=256)[:n]
        total += matrix
        out_of_range += wrong_ids
        labelled = int(valid.sum())
        image_ious = [v for v in iou_from_confusion(matrix, wrong_ids) if v is not None]
        images.append({"id": image.id, "pixels": labelled,
                       "accuracy": float(np.trace(matrix) / labelled) if labelled else None,
                       "miou": float(np.mean(image_ious)) if image_ious else None})
    ious = iou_from_confusion(total, out_of_range)
    present = [v for v in ious if v is not None]
    labelled = int(total.sum() + out_of_range.sum())
    classes = [{"class": name, "iou": iou, "gt_pixels": int(total[i].sum() + out_of_range[i]),
                "pr_pixels": int(total[:, i].sum())}
               for i, (name, iou) in enumerate(zip(gt.classes, ious, strict=True))]
    return {"task": "parsing", "summary": {"miou": float(np.mean(present)) if present else None,
                                           "pixel_accuracy": float(np.trace(total) / labelled) if labelled else None},
            "classes": classes, "confusion": total.tolist(), "images": images}
