"""`aidi eval` and `aidi gt`: score predictions against ground truth, write the results and the report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from aidi import cmdline

EVAL_EPILOG = """\
examples:
  aidi eval --gt data/rec/vehicle/val.rec --pr val_pr.json --out eval/vehicle
  aidi eval --gt val_gt.json --pr val_pr.json --iou 0.7 --score-thr 0.3 --json

GT is an aidi-gt/1 JSON file, a COCO annotation file, or a packed .rec file (its ground truth is
extracted first). PR is an aidi-pr/1 file as `aidi predict` writes it. Formats: docs/phase2.md.
The output folder gets results.json and report.html (open it in a browser; it needs no network).
Keep it with the model version it scores (the console's model and job pages link it):
  hitc model report adasmini_4pe_multitask --version v2 --label vehicle --eval-dir eval/vehicle
"""


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def print_table(results: dict[str, Any]) -> None:
    if results["task"] == "detection":
        cols = ["class", "gt", "detections", "ap_voc11", "ap_all_point", "ap_coco101", "tp", "fp", "fn",
                "recall", "precision"]
    else:
        cols = ["class", "iou", "gt_pixels", "pr_pixels"]
    rows = [[_fmt(row[c]) for c in cols] for row in results["classes"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def run_eval(args: argparse.Namespace) -> int:
    from aidi import evaluate
    from aidi.dataspace import refs as dsref

    out_dir = Path(args.out) if args.out else None
    if dsref.is_ref(args.gt) or dsref.is_ref(args.pr):
        # Inputs are fetched beside, never into, the output folder (a pod syncs that folder to the dataspace).
        with tempfile.TemporaryDirectory(prefix="aidi-eval-inputs-") as tmp:
            from aidi.dataspace import DataspaceConfig, open_dataspace
            from aidi.evaluate.task import resolve_input

            dataspace = open_dataspace(DataspaceConfig.load())
            args.gt = str(resolve_input(args.gt, dataspace, Path(tmp), "gt"))
            args.pr = str(resolve_input(args.pr, dataspace, Path(tmp), "pr"))
            return run_eval(args)
    gt_path = Path(args.gt)
    if gt_path.suffix == ".rec":
        gt_dir = out_dir / "gt" if out_dir else Path(tempfile.mkdtemp(prefix="aidi-gt-"))
        gt = evaluate.gt_from_rec(gt_path, gt_dir / f"{gt_path.stem}_gt.json",
                                  args.classes.split(",") if args.classes else None)
    else:
        gt = evaluate.load_ground_truth(gt_path)
    pr = evaluate.load_predictions(args.pr)
    outcome = evaluate.evaluate(gt, pr, args.iou, args.score_thr, out_dir, report=not args.no_report)
    if args.json:
        cmdline.print_json(outcome.results)
        return 0
    print_table(outcome.results)
    s = outcome.results["summary"]
    if outcome.results["task"] == "detection":
        print(f"mAP@{args.iou}: voc11 {_fmt(s['map_voc11'])}, all-point {_fmt(s['map_all_point'])}, "
              f"coco101 {_fmt(s['map_coco101'])}; at score >= {args.score_thr}: tp {s['tp']} fp {s['fp']} "
              f"fn {s['fn']} recall {_fmt(s['recall'])} precision {_fmt(s['precision'])}")
    else:
        print(f"mIoU {_fmt(s['miou'])}, pixel accuracy {_fmt(s['pixel_accuracy'])}")
    if outcome.results_path:
        print(f"results: {outcome.results_path}")
    if outcome.report_path:
        print(f"report:  {outcome.report_path}")
    return 0


def run_gt(args: argparse.Namespace) -> int:
    from aidi import evaluate

    gt = evaluate.gt_from_rec(Path(args.rec), Path(args.out), args.classes.split(",") if args.classes else None,
                              with_images=not args.no_images)
    print(f"{args.out}: {gt.task} ground truth of {len(gt.images)} images, classes {gt.classes}")
    return 0


def add_commands(sub: Any) -> None:
    ev = cmdline.subcommand(sub, "eval", run_eval, "score predictions against ground truth (AP, recall, mIoU, report)",
                           epilog=EVAL_EPILOG)
    ev.add_argument("--gt", required=True,
                    help="ground truth: aidi-gt/1 JSON, COCO JSON, a .rec file, or dataspace://NAME/TYPE/VERSION[/PATH]")
    ev.add_argument("--pr", required=True,
                    help="predictions: aidi-pr/1 JSON (from `aidi predict`), or dataspace://NAME/pr/VERSION[/PATH]")
    ev.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to hit a box (default: 0.5)")
    ev.add_argument("--score-thr", type=float, default=0.3,
                    help="score at which tp/fp/fn, recall and precision are counted (default: 0.3, as the "
                         "trainer's validation; AP uses all)")
    ev.add_argument("--out", help="folder for results.json and report.html (default: print only)")
    ev.add_argument("--classes", help="class names, comma-separated, when GT is a .rec without a manifest beside it")
    ev.add_argument("--no-report", action="store_true", help="write results.json only")
    cmdline.add_json(ev)
    gt = cmdline.subcommand(sub, "gt", run_gt, "write the ground truth (aidi-gt/1) of a packed .rec file",
                           epilog="example:\n  aidi gt --rec data/rec/vehicle/val.rec --out eval/val_gt.json\n"
                                  "images go to <out stem>_images/, parsing masks to <out stem>_masks/")
    gt.add_argument("--rec", required=True, help="a .rec file written by `aidi pack` (its .idx beside it)")
    gt.add_argument("--out", required=True, help="the JSON file to write")
    gt.add_argument("--classes", help="class names, comma-separated (default: from the manifest beside the rec)")
    gt.add_argument("--no-images", action="store_true", help="do not extract the JPEGs (the report shows boxes only)")
