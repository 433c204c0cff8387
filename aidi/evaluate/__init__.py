"""Phase 2 evaluation: ground truth and predictions files, detection AP / recall / precision / tp-fp-fn,
parsing IoU / mIoU, a results JSON and an HTML report (docs/phase2.md). No MXNet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidi.evaluate.detection import DEFAULT_SCORE_THRESHOLD
from aidi.evaluate.formats import (
    GT_FORMAT,
    PR_FORMAT,
    FormatError,
    GroundTruth,
    Predictions,
    align_to_coco,
    gt_from_coco,
    gt_from_rec,
    load_ground_truth,
    load_predictions,
    write_json,
)

__all__ = [
    "GT_FORMAT", "PR_FORMAT", "RESULTS_FORMAT", "EvalOutcome", "FormatError", "GroundTruth", "Predictions",
    "align_to_coco", "check_pair", "evaluate", "evaluate_files", "gt_from_coco", "gt_from_rec", "load_ground_truth",
    "load_predictions",
]

RESULTS_FORMAT = "aidi-eval/1"
log = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    results: dict[str, Any]
    results_path: Path | None
    report_path: Path | None


def check_pair(gt: GroundTruth, pr: Predictions) -> None:
    """Refuse a predictions file that cannot be scored against this ground truth, saying why."""
    if gt.task != pr.task:
        raise FormatError(f"{pr.source} holds {pr.task} predictions but {gt.source} is {gt.task} ground truth")
    unknown = [c for c in pr.classes if c not in gt.classes]
    if unknown:
        raise FormatError(f"{pr.source}: classes {unknown} are not in the ground truth's {gt.classes}; evaluate "
                          "predictions of a model trained on this scene")
    gt_ids = {image.id for image in gt.images}
    stray = [image_id for image_id in pr.images if image_id not in gt_ids]
    if stray:
        raise FormatError(f"{pr.source}: {len(stray)} predicted image ids are not in {gt.source} (e.g. "
                          f"{stray[0]!r}); were the predictions made on another rec file?")
    missing = len(gt_ids) - len(pr.images)
    if missing and pr.task == "detection":
        log.warning("%s: %d ground-truth images have no entry in the predictions; counted as no detections",
                    pr.source, missing)


def evaluate(gt: GroundTruth, pr: Predictions, iou_threshold: float = 0.5,
             score_threshold: float = DEFAULT_SCORE_THRESHOLD, out_dir: Path | None = None,
             report: bool = True) -> EvalOutcome:
    """Score ``pr`` against ``gt``; with ``out_dir``, write ``results.json`` and ``report.html`` there."""
    from aidi.errors import UsageError

    if not 0 < iou_threshold <= 1:
        raise UsageError(f"--iou: expected a threshold in (0, 1], got {iou_threshold}")
    if not 0 <= score_threshold <= 1:
        raise UsageError(f"--score-thr: expected a threshold in [0, 1], got {score_threshold}")
    if gt.coco and gt.task == pr.task == "detection":
        gt, pr = align_to_coco(gt, pr)
    check_pair(gt, pr)
    matches = None
    if gt.task == "detection":
        from aidi.evaluate.detection import evaluate_detection

        results = evaluate_detection(gt, pr, iou_threshold, score_threshold)
        matches = results.pop("_matches")
    else:
        from aidi.evaluate.parsing import evaluate_parsing

        results = evaluate_parsing(gt, pr)
    results = {"format": RESULTS_FORMAT, "ground_truth": str(gt.source), "predictions": str(pr.source),
               "model": pr.model, **results}
    results_path = report_path = None
    if out_dir is not None:
        results_path = out_dir / "results.json"
        write_json(results_path, results)
        if report:
            from aidi.evaluate.report import write_report

            report_path = write_report(out_dir, results, gt, pr, matches)
    return EvalOutcome(results, results_path, report_path)


def evaluate_files(gt_path: str | Path, pr_path: str | Path, iou_threshold: float = 0.5,
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, out_dir: str | Path | None = None,
                   report: bool = True) -> EvalOutcome:
    return evaluate(load_ground_truth(gt_path), load_predictions(pr_path), iou_threshold, score_threshold,
                    Path(out_dir) if out_dir is not None else None, report)
