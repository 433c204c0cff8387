"""Evaluation speed: `aidi eval`'s detection metrics against pycocotools on the same predictions.

    .venv/bin/python bench/evaluate.py                    # 5,000 images, 3 classes
    .venv/bin/python bench/evaluate.py --images 20000

Both compute AP at one IoU threshold (0.5) with COCO's matching from in-memory data; pycocotools is
timed for building its index, loadRes, evaluate() and accumulate(), ours for ``aidi.evaluate.evaluate``
without writing files (which also computes the VOC 11-point and all-point APs and per-image counts).
Prints seconds for both, the ratio, and the largest AP difference (which must be below 1e-3).
There is no speed target; the figure tells whether `aidi eval` is usable on large val sets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aidi import evaluate
from tests.test_evaluate import coco_ap, synthetic_detection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    gt, pr = synthetic_detection(seed=11, images=args.images)
    detections = sum(len(p.detections) for p in pr.images.values())
    print(f"{args.images} images, {sum(len(i.objects) for i in gt.images)} boxes, {detections} detections")

    started = time.perf_counter()
    ours = [row["ap_coco101"] for row in evaluate.evaluate(gt, pr).results["classes"]]
    our_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        reference = coco_ap(gt, pr, 0.5)
    coco_seconds = time.perf_counter() - started

    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    print(f"aidi eval   : {our_seconds:7.2f} s  ({args.images / our_seconds:,.0f} images/s)")
    print(f"pycocotools : {coco_seconds:7.2f} s  ({args.images / coco_seconds:,.0f} images/s)")
    print(f"ratio (pycocotools time / ours): {coco_seconds / our_seconds:.2f}x; max |AP difference| {worst:.2e}")


if __name__ == "__main__":
    main()
