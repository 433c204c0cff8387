"""Decoding the heads' outputs and the validation figures written to metrics.json.

Detection: sigmoid heatmap → 3×3 local maxima → top-k → boxes → per-class NMS. Figures: precision and
recall at IoU 0.5 for detections scoring at least ``SCORE_THRESHOLD``. Segmentation: mean IoU and
pixel accuracy at the output grid.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import mxnet as mx
import numpy as np

from aidi_trainer.losses import IGNORE, detection_loss, segmentation_loss
from aidi_trainer.model import BOX_CHANNELS, DET

SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
TOP_K = 50


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(dets: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Per-class non-maximum suppression of rows ``[cls, score, x0, y0, x1, y1]``."""
    keep = []
    for cls in np.unique(dets[:, 0]):
        rows = dets[dets[:, 0] == cls]
        rows = rows[np.argsort(-rows[:, 1])]
        while len(rows):
            keep.append(rows[0])
            rows = rows[1:][iou(rows[0, 2:], rows[1:, 2:]) < threshold] if len(rows) > 1 else rows[:0]
    return np.array(keep, np.float32).reshape(-1, 6)


def decode_detections(output: mx.nd.NDArray, stride: int, top_k: int = TOP_K,
                      score_threshold: float = 0.05) -> list[np.ndarray]:
    """Head output ``(N, C + 4, H, W)`` → per image ``[cls, score, x0, y0, x1, y1]`` rows in input pixels."""
    num_classes = output.shape[1] - BOX_CHANNELS
    heat = mx.nd.sigmoid(mx.nd.slice_axis(output, axis=1, begin=0, end=num_classes))
    peaks = heat * (heat == mx.nd.Pooling(heat, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="max"))
    box = mx.nd.slice_axis(output, axis=1, begin=num_classes, end=None).asnumpy()
    n, _, h, w = heat.shape
    scores, index = mx.nd.topk(peaks.reshape((n, -1)), k=min(top_k, num_classes * h * w), ret_typ="both")
    scores, index = scores.asnumpy(), index.asnumpy().astype(np.int64)
    results = []
    for i in range(n):
        keep = scores[i] >= score_threshold
        idx = index[i][keep]
        cls, y, x = idx // (h * w), (idx % (h * w)) // w, idx % w
        bw, bh = np.exp(box[i, 0, y, x]) * stride, np.exp(box[i, 1, y, x]) * stride
        cx, cy = (x + box[i, 2, y, x]) * stride, (y + box[i, 3, y, x]) * stride
        dets = np.stack([cls, scores[i][keep], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        results.append(nms(dets.astype(np.float32)))
    return results


def targets_to_boxes(heatmap: np.ndarray, box: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """Ground truth back from the encoded targets of one image: ``[cls, x0, y0, x1, y1]`` rows."""
    ys, xs = np.nonzero(mask[0])
    rows = []
    for y, x in zip(ys, xs, strict=True):
        cls = int(np.argmax(heatmap[:, y, x] == 1.0))
        bw, bh = np.exp(box[0, y, x]) * stride, np.exp(box[1, y, x]) * stride
        cx, cy = (x + box[2, y, x]) * stride, (y + box[3, y, x]) * stride
        rows.append([cls, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return np.array(rows, np.float32).reshape(-1, 5)


class DetCounts:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add(self, dets: np.ndarray, truth: np.ndarray) -> None:
        dets = dets[dets[:, 1] >= SCORE_THRESHOLD]
        matched = np.zeros(len(truth), bool)
        for det in dets[np.argsort(-dets[:, 1])]:
            same = np.nonzero((truth[:, 0] == det[0]) & ~matched)[0]
            overlaps = iou(det[2:], truth[same, 1:]) if len(same) else np.zeros(0)
            if len(overlaps) and overlaps.max() >= IOU_THRESHOLD:
                matched[same[int(overlaps.argmax())]] = True
                self.tp += 1
            else:
                self.fp += 1
        self.fn += int((~matched).sum())

    def result(self) -> dict[str, float]:
        return {"precision": self.tp / max(self.tp + self.fp, 1), "recall": self.tp / max(self.tp + self.fn, 1),
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


class SegCounts:
    def __init__(self, num_classes: int) -> None:
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def add(self, output: np.ndarray, label: np.ndarray) -> None:
        pred = output.argmax(axis=1).ravel()
        truth = label.astype(np.int64).ravel()
        valid = truth != IGNORE
        n = len(self.confusion)
        self.confusion += np.bincount(truth[valid] * n + pred[valid], minlength=n * n).reshape(n, n)

    def result(self) -> dict[str, float]:
        c = self.confusion
        present = c.sum(axis=1) > 0
        ious = np.diag(c) / np.maximum(c.sum(axis=0) + c.sum(axis=1) - np.diag(c), 1)
        return {"miou": float(ious[present].mean()) if present.any() else 0.0,
                "pixel_acc": float(np.diag(c).sum() / max(c.sum(), 1))}


def evaluate_task(net: Any, task: str, kind: str, num_classes: int, batches: Iterable[Any],
                  ctx: mx.Context, stride: int) -> dict[str, float]:
    """Mean validation loss terms and the task's figures over ``batches``."""
    sums: dict[str, float] = {}
    count = 0
    counts: DetCounts | SegCounts = DetCounts() if kind == DET else SegCounts(num_classes)
    for batch in batches:
        data = [arr.as_in_context(ctx) for arr in batch]
        output = net(data[0], task)
        terms = detection_loss(output, *data[1:]) if kind == DET else segmentation_loss(output, data[1])
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.asscalar())
        count += 1
        if kind == DET:
            heatmap, box, mask = (arr.asnumpy() for arr in batch[1:])
            for i, dets in enumerate(decode_detections(output, stride)):
                counts.add(dets, targets_to_boxes(heatmap[i], box[i], mask[i], stride))
        else:
            counts.add(output.asnumpy(), batch[1].asnumpy())
    losses = {f"loss_{name}": value / max(count, 1) for name, value in sums.items()}
    return {**losses, **counts.result()}
