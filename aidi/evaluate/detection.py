"""Detection metrics: matching, AP under three interpolations, and tp/fp/fn at a score threshold.

Matching follows COCO's ``evaluateImg`` exactly, so that ``coco101`` equals pycocotools' AP at the same
single IoU threshold: per image and class, detections in descending score order each take the unmatched
ground-truth box with the highest IoU (>= the threshold; non-ignored boxes preferred); a detection that
takes an ignored box counts neither as a hit nor as a false positive. IoU is area-based with no +1
(continuous pixel coordinates, as COCO).

Because a detection's outcome depends only on the detections scored above it, each detection's status
is fixed once and the counts at any score threshold are just the detections at or above it — the HTML
report relies on that to move its threshold without re-matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aidi.evaluate.formats import Box, GroundTruth, Predictions

AP_METHODS = ("voc11", "all_point", "coco101")
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# Where tp/fp/fn are counted by default: the trainer's validation counts at the same score
# (aidi_trainer.validation.SCORE_THRESHOLD), so `aidi eval` and metrics.json agree.
DEFAULT_SCORE_THRESHOLD = 0.3


@dataclass
class MatchedDetection:
    cls: int
    box: Box
    score: float
    status: str              # "tp" | "fp" | "ignored"
    gt_index: int | None     # the ground-truth box it matched, within its image


@dataclass
class MatchedGt:
    cls: int
    box: Box
    ignore: bool
    matched_score: float | None   # score of the detection that found it; None = missed at any threshold


@dataclass
class ImageMatches:
    id: str
    detections: list[MatchedDetection] = field(default_factory=list)
    gts: list[MatchedGt] = field(default_factory=list)

    def counts(self, score_threshold: float) -> dict[str, Any]:
        tp = sum(1 for d in self.detections if d.status == "tp" and d.score >= score_threshold)
        fps = [d.score for d in self.detections if d.status == "fp" and d.score >= score_threshold]
        fn = sum(1 for g in self.gts if not g.ignore and (g.matched_score is None or g.matched_score < score_threshold))
        return {"id": self.id, "tp": tp, "fp": len(fps), "fn": fn, "max_fp_score": max(fps, default=None)}


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N×4, xyxy) with every box in ``b`` (M×4) → N×M."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)))
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(image_id: str, gts: list[tuple[int, Box, bool]], dets: list[tuple[int, Box, float]],
                iou_threshold: float) -> ImageMatches:
    """Match one image's detections to its ground truth, class by class (COCO's rule, module docstring)."""
    result = ImageMatches(image_id)
    result.gts = [MatchedGt(c, b, ign, None) for c, b, ign in gts]
    for cls in sorted({c for c, _, _ in gts} | {c for c, _, _ in dets}):
        g_idx = [i for i, g in enumerate(gts) if g[0] == cls]
        g_idx.sort(key=lambda i: gts[i][2])            # non-ignored first, stable
        d_list = [d for d in dets if d[0] == cls]
        order = np.argsort([-d[2] for d in d_list], kind="mergesort")
        ious = box_iou(np.array([d_list[i][1] for i in order], dtype=float).reshape(-1, 4),
                       np.array([gts[i][1] for i in g_idx], dtype=float).reshape(-1, 4))
        taken = [False] * len(g_idx)
        for row, d_i in enumerate(order):
            best, best_iou = -1, min(iou_threshold, 1 - 1e-10)
            for col, gi in enumerate(g_idx):
                if taken[col]:
                    continue
                if best > -1 and not gts[g_idx[best]][2] and gts[gi][2]:
                    break                               # a real box is matched; ignored ones come last
                if ious[row, col] < best_iou:
                    continue
                best, best_iou = col, ious[row, col]
            cls_, box, score = d_list[d_i]
            if best == -1:
                result.detections.append(MatchedDetection(cls_, box, score, "fp", None))
                continue
            taken[best] = True
            gi = g_idx[best]
            result.gts[gi].matched_score = score
            status = "ignored" if gts[gi][2] else "tp"
            result.detections.append(MatchedDetection(cls_, box, score, status, gi))
    return result


def precision_recall(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision over detections ordered by descending score (stable, as COCO)."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(is_tp[order]).astype(float)
    fp = np.cumsum(~is_tp[order]).astype(float)
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing in recall: p(r) = max precision at recall >= r."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def ap_voc11(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2007: mean of the best precision at recall >= 0, 0.1, ..., 1.0."""
    total = 0.0
    for t in np.linspace(0, 1, 11):
        above = precision[recall >= t]
        total += float(above.max()) if above.size else 0.0
    return total / 11


def ap_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2010+: the exact area under the precision envelope (every recall step counts)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = _envelope(np.concatenate(([0.0], precision, [0.0])))
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def ap_coco101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO: mean envelope precision at recall 0, 0.01, ..., 1.0 (pycocotools' ``COCOeval.accumulate``)."""
    if recall.size == 0:
        return 0.0
    env = _envelope(precision)
    inds = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    return float(np.mean([env[i] if i < env.size else 0.0 for i in inds]))


AP_FUNCTIONS = {"voc11": ap_voc11, "all_point": ap_all_point, "coco101": ap_coco101}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def evaluate_detection(gt: GroundTruth, pr: Predictions, iou_threshold: float = 0.5,
                       score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> dict[str, Any]:
    """Every metric of ``docs/phase2.md``'s detection results, plus the per-image matches for the report."""
    class_map = [gt.classes.index(name) for name in pr.classes]
    matches: list[ImageMatches] = []
    for image in gt.images:
        pr_image = pr.images.get(image.id)
        dets = [(class_map[d.cls], d.box, d.score) for d in pr_image.detections] if pr_image else []
        matches.append(match_image(image.id, [(o.cls, o.box, o.ignore) for o in image.objects], dets,
                                   iou_threshold))
    classes = []
    for cls, name in enumerate(gt.classes):
        num_gt = sum(1 for m in matches for g in m.gts if g.cls == cls and not g.ignore)
        scored = [(d.score, d.status == "tp") for m in matches for d in m.detections
                  if d.cls == cls and d.status != "ignored"]
        scores = np.array([s for s, _ in scored], dtype=float)
        is_tp = np.array([t for _, t in scored], dtype=bool)
        row: dict[str, Any] = {"class": name, "gt": num_gt, "detections": len(scored)}
        if num_gt:
            recall, precision = precision_recall(scores, is_tp, num_gt)
            for method, func in AP_FUNCTIONS.items():
                row[f"ap_{method}"] = func(recall, precision) if scores.size else 0.0
        else:
            row.update({f"ap_{method}": None for method in AP_METHODS})   # AP is undefined without positives
        keep = scores >= score_threshold
        tp, fp = int(is_tp[keep].sum()), int((~is_tp[keep]).sum())
        row.update({"tp": tp, "fp": fp, "fn": num_gt - tp, "recall": _ratio(tp, num_gt),
                    "precision": _ratio(tp, tp + fp)})
        classes.append(row)
    summary: dict[str, Any] = {}
    for method in AP_METHODS:
        aps = [c[f"ap_{method}"] for c in classes if c[f"ap_{method}"] is not None]
        summary[f"map_{method}"] = float(np.mean(aps)) if aps else None
    tp, fp, fn = (sum(c[k] for c in classes) for k in ("tp", "fp", "fn"))
    summary.update({"tp": tp, "fp": fp, "fn": fn, "recall": _ratio(tp, tp + fn), "precision": _ratio(tp, tp + fp)})
    return {"task": "detection", "iou_threshold": iou_threshold, "score_threshold": score_threshold,
            "summary": summary, "classes": classes,
            "images": [m.counts(score_threshold) for m in matches], "_matches": matches}
