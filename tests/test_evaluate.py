"""Evaluation: AP against pycocotools, the interpolations by hand, mIoU on known masks, the report, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aidi import evaluate, recordio
from aidi.cli import aidi_main
from aidi.evaluate import detection
from aidi.evaluate.formats import Detection, GroundTruth, GtImage, GtObject, Predictions, PrImage

CLASSES = ["car", "person", "sign"]


def synthetic_detection(seed: int = 0, images: int = 40) -> tuple[GroundTruth, Predictions]:
    """Ground truth with jittered, missed and spurious detections: every matching path is exercised."""
    rng = np.random.default_rng(seed)
    gt_images, pr_images = [], {}
    for i in range(images):
        image = GtImage(str(i), 640, 480)
        dets = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            w, h = rng.uniform(8, 80), rng.uniform(8, 80)
            cls = int(rng.integers(0, len(CLASSES)))
            image.objects.append(GtObject(cls, (x, y, x + w, y + h)))
            for _ in range(rng.integers(0, 3)):        # 0 = a miss, 2 = a duplicate
                jitter = rng.normal(0, 0.12 * min(w, h), 4)
                box = (x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3])
                dets.append(Detection(cls, (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]),
                                            max(box[1], box[3])), float(rng.uniform(0.05, 1))))
        for _ in range(rng.integers(0, 3)):            # false positives anywhere
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            dets.append(Detection(int(rng.integers(0, len(CLASSES))), (x, y, x + 40, y + 30),
                                  float(rng.uniform(0.05, 1))))
        gt_images.append(image)
        pr_images[image.id] = PrImage(image.id, dets)
    return GroundTruth("detection", CLASSES, gt_images), Predictions("detection", CLASSES, pr_images)


def coco_ap(gt: GroundTruth, pr: Predictions, iou: float) -> list[float]:
    """pycocotools' AP per class at one IoU threshold (area 'all', maxDets 100)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    anns = []
    for image in gt.images:
        for o in image.objects:
            x1, y1, x2, y2 = o.box
            anns.append({"id": len(anns) + 1, "image_id": int(image.id), "category_id": o.cls + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco_gt.dataset = {"images": [{"id": int(i.id), "width": i.width, "height": i.height} for i in gt.images],
                       "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        results = [{"image_id": int(i), "category_id": d.cls + 1, "score": d.score,
                    "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
                   for i, p in pr.images.items() for d in p.detections]
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 2]          # [recall thresholds, class] at area all, 100 dets
    return [float(np.mean(precision[:, k])) for k in range(len(CLASSES))]


@pytest.mark.parametrize(("seed", "iou"), [(0, 0.5), (1, 0.5), (2, 0.75)])
def test_coco101_ap_agrees_with_pycocotools(seed, iou):
    gt, pr = synthetic_detection(seed)
    ours = evaluate.evaluate(gt, pr, iou_threshold=iou).results["classes"]
    reference = coco_ap(gt, pr, iou)
    assert all(0.05 < ap < 0.95 for ap in reference), reference   # a test that could fail both ways
    for row, ap in zip(ours, reference, strict=True):
        assert row["ap_coco101"] == pytest.approx(ap, abs=1e-3)
        # all-point is the exact area; COCO samples it at 101 recalls, so they differ, but by < 1/101.
        assert abs(row["ap_all_point"] - ap) < 1 / 101 + 1e-9


def hand_case() -> tuple[GroundTruth, Predictions]:
    """2 boxes; detections scored .9 (hit), .8 (false positive), .7 (hit): recall .5 .5 1, precision 1 .5 .667."""
    gt = GroundTruth("detection", ["car"], [GtImage("a", 100, 100, objects=[
        GtObject(0, (0, 0, 10, 10)), GtObject(0, (50, 50, 70, 70))])])
    pr = Predictions("detection", ["car"], {"a": PrImage("a", [
        Detection(0, (0, 0, 10, 10), 0.9), Detection(0, (80, 80, 90, 90), 0.8),
        Detection(0, (50, 50, 70, 69), 0.7)])})
    return gt, pr


def test_interpolations_by_hand():
    row = evaluate.evaluate(*hand_case(), score_threshold=0.75).results["classes"][0]
    assert row["ap_all_point"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert row["ap_voc11"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert row["ap_coco101"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert (row["tp"], row["fp"], row["fn"]) == (1, 1, 1)
    assert row["recall"] == 0.5 and row["precision"] == 0.5


def test_ignored_boxes_and_duplicates():
    gt = GroundTruth("detection", ["car"], [GtImage("a", 100, 100, objects=[
        GtObject(0, (0, 0, 10, 10)), GtObject(0, (40, 40, 60, 60), ignore=True)])])
    pr = Predictions("detection", ["car"], {"a": PrImage("a", [
        Detection(0, (0, 0, 10, 10), 0.9), Detection(0, (0, 0, 10, 10), 0.8),   # duplicate → fp
        Detection(0, (40, 40, 60, 60), 0.95)])})                                   # on an ignored box → neither
    outcome = evaluate.evaluate(gt, pr)
    row = outcome.results["classes"][0]
    assert (row["gt"], row["detections"], row["tp"], row["fp"], row["fn"]) == (1, 2, 1, 1, 0)
    assert row["ap_all_point"] == pytest.approx(1.0)


def test_iou_threshold_is_inclusive_and_configurable():
    # IoU of these boxes is exactly 0.5.
    gt = GroundTruth("detection", ["car"], [GtImage("a", 100, 100, objects=[GtObject(0, (0, 0, 20, 10))])])
    pr = Predictions("detection", ["car"], {"a": PrImage("a", [Detection(0, (0, 0, 10, 10), 0.9)])})
    assert evaluate.evaluate(gt, pr, iou_threshold=0.5).results["classes"][0]["tp"] == 1
    assert evaluate.evaluate(gt, pr, iou_threshold=0.51).results["classes"][0]["tp"] == 0


def write_mask(path: Path, rows: list[list[int]]) -> Path:
    Image.fromarray(np.array(rows, dtype=np.uint8)).save(path)
    return path


def test_miou_on_known_masks(tmp_path):
    gt_mask = write_mask(tmp_path / "gt.png", [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
    pr_mask = write_mask(tmp_path / "pr.png", [[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 0], [0, 2, 1, 1]])
    gt = GroundTruth("parsing", ["road", "car", "sky", "tree"], [GtImage("x", 4, 4, mask=gt_mask)])
    pr = Predictions("parsing", ["road", "car", "sky", "tree"], {"x": PrImage("x", mask=pr_mask)})
    outcome = evaluate.evaluate(gt, pr, out_dir=tmp_path / "out")
    ious = [c["iou"] for c in outcome.results["classes"]]
    # road: tp 3 (gt 4, pr 4 on labelled pixels) → 3/5; car: tp 4, fp 1 → 4/5; sky: tp 3, fn 1 → 3/4; tree absent.
    assert ious[:3] == pytest.approx([3 / 5, 4 / 5, 3 / 4])
    assert ious[3] is None
    assert outcome.results["summary"]["miou"] == pytest.approx((3 / 5 + 4 / 5 + 3 / 4) / 3)
    assert outcome.results["summary"]["pixel_accuracy"] == pytest.approx(10 / 12)
    html = outcome.report_path.read_text()
    assert "mIoU (worst first)" in html
    assert (tmp_path / "out" / "masks" / "x.err.png").is_file()


def test_report_is_self_contained_with_four_colours_and_controls(tmp_path):
    gt, pr = hand_case()
    picture = tmp_path / "a.jpg"
    Image.new("RGB", (100, 100), (90, 90, 90)).save(picture)
    gt.images[0].image = picture
    outcome = evaluate.evaluate(gt, pr, score_threshold=0.75, out_dir=tmp_path / "report")
    html = outcome.report_path.read_text()
    for colour in ('gt: "#22d3ee"', 'hit: "#16a34a"', 'fp: "#e11d48"', 'miss: "#f59e0b"'):
        assert colour in html
    for control in ('"fp count"', '"fn count"', '"max fp score"', 'id="bad"', 'id="thr"'):
        assert control in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything remotely"
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)[1])
    image = data["images"][0]
    assert image["src"] == "images/a.jpg" and (tmp_path / "report" / "images" / "a.jpg").is_file()
    assert sorted(d[6] for d in image["dets"]) == ["fp", "tp", "tp"]
    results = json.loads(outcome.results_path.read_text())
    assert results["images"] == [{"id": "a", "tp": 1, "fp": 1, "fn": 1, "max_fp_score": 0.8}]


def run_aidi(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = aidi_main.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_eval_cli_from_a_rec_file(tmp_path):
    """`aidi eval --gt val.rec`: ground truth straight from packed records, boxes back in pixels."""
    jpeg = io.BytesIO()
    Image.new("RGB", (200, 100)).save(jpeg, format="JPEG")
    rec = tmp_path / "val.rec"
    with recordio.IndexedRecordWriter(rec, tmp_path / "val.idx") as writer:
        writer.write(0, recordio.pack_detection(jpeg.getvalue(), 200, 100, [(1, 0.1, 0.2, 0.3, 0.6)], id=0))
        writer.write(1, recordio.pack_detection(jpeg.getvalue(), 200, 100, [(0, 0.5, 0.5, 0.9, 0.9)], id=1))
    pr = tmp_path / "val_pr.json"
    pr.write_text(json.dumps({"format": "aidi-pr/1", "task": "detection", "classes": ["car", "person"], "images": [
        {"id": "0", "detections": [{"class": "person", "box": [20, 20, 60, 60], "score": 0.9}]},
        {"id": "1", "detections": [{"class": "person", "box": [100, 50, 180, 90], "score": 0.6}]}]}))
    code, out, err = run_aidi("eval", "--gt", str(rec), "--pr", str(pr), "--classes", "car,person",
                              "--out", str(tmp_path / "ev"), "--json")
    assert code == 0, err
    results = json.loads(out)
    car, person = results["classes"]
    assert (car["tp"], car["fn"], person["tp"], person["fp"]) == (0, 1, 1, 1)
    gt = json.loads((tmp_path / "ev" / "gt" / "val_gt.json").read_text())
    assert gt["images"][0]["objects"] == [{"class": "person", "box": [20.0, 20.0, 60.0, 60.0]}]
    assert (tmp_path / "ev" / "report.html").is_file()


def test_bad_predictions_file_names_the_field(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"format": "aidi-gt/1", "task": "detection", "classes": ["car"], "images": [
        {"id": "0", "width": 10, "height": 10, "objects": []}]}))
    pr = tmp_path / "pr.json"
    pr.write_text(json.dumps({"format": "aidi-pr/1", "task": "detection", "classes": ["car"], "images": [
        {"id": "0", "detections": [{"class": "car", "box": [5, 5, 1, 9], "score": 0.5}]}]}))
    code, _, err = run_aidi("eval", "--gt", str(gt), "--pr", str(pr))
    assert code == 2
    assert "images[0].detections[0].box" in err and "xmin <= xmax" in err
    pr.write_text(json.dumps({"format": "aidi-pr/1", "task": "detection", "classes": ["bus"], "images": []}))
    code, _, err = run_aidi("eval", "--gt", str(gt), "--pr", str(pr))
    assert code == 2 and "['bus'] are not in the ground truth" in err


def test_coco_annotations_load_as_ground_truth(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "sign"}, {"id": 1, "name": "car"}]}))
    gt = evaluate.load_ground_truth(path)
    assert gt.classes == ["car", "sign"]
    assert gt.images[0].objects == [GtObject(1, (1.0, 2.0, 11.0, 22.0), False)]
    assert gt.images[0].image == tmp_path / "a.jpg"


def test_detection_status_is_threshold_independent():
    """What the report's live threshold relies on: counts from fixed statuses equal a re-match."""
    gt, pr = synthetic_detection(3, images=15)
    full = evaluate.evaluate(gt, pr, score_threshold=0.0)
    for thr in (0.3, 0.6):
        kept = Predictions("detection", CLASSES, {k: PrImage(k, [d for d in v.detections if d.score >= thr])
                                                  for k, v in pr.images.items()})
        rematched = evaluate.evaluate(gt, kept, score_threshold=0.0).results["images"]
        matches = [detection.match_image(g.id, [(o.cls, o.box, o.ignore) for o in g.objects],
                                         [(d.cls, d.box, d.score) for d in pr.images[g.id].detections], 0.5)
                   for g in gt.images]
        assert [m.counts(thr) for m in matches] == rematched
        assert full.results["summary"]["tp"] >= sum(r["tp"] for r in rematched)


def test_predictions_on_a_rec_score_against_the_scenes_coco_annotations(tmp_path):
    """Predictions keyed by record key find their COCO image through source_id, resized boxes are scaled
    back, and only the predicted images (one split of the annotations) are scored."""
    coco = tmp_path / "annotations.json"
    coco.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 9, "file_name": "b.jpg", "width": 200, "height": 100}],   # in the train split
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [20, 10, 40, 30]},
                        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10]}],
        "categories": [{"id": 1, "name": "car"}]}))
    pr = tmp_path / "val_pr.json"
    pr.write_text(json.dumps({"format": "aidi-pr/1", "task": "detection", "classes": ["car"], "images": [
        {"id": "0", "source_id": "7", "width": 100, "height": 50,        # packed at half size
         "detections": [{"class": "car", "box": [10, 5, 30, 20], "score": 0.9}]}]}))
    results = evaluate.evaluate_files(coco, pr).results
    assert results["images"] == [{"id": "7", "tp": 1, "fp": 0, "fn": 0, "max_fp_score": None}]
    assert results["classes"][0]["ap_all_point"] == pytest.approx(1.0)
    pr.write_text(json.dumps({"format": "aidi-pr/1", "task": "detection", "classes": ["car"], "images": [
        {"id": "0", "detections": []}]}))
    with pytest.raises(evaluate.FormatError, match="no source_id"):
        evaluate.evaluate_files(coco, pr)


def test_a_bad_ground_truth_file_lists_every_problem_at_its_field(tmp_path):
    from aidi.api.errors import SpecError

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"format": "aidi-gt/1", "task": "detection", "classes": ["car", "car"], "images": [
        {"id": "0", "width": "10", "height": 10, "objects": [{"class": "car", "box": [5, 5, 1, 9]}]}]}))
    with pytest.raises(SpecError) as raised:
        evaluate.load_ground_truth(gt)
    assert [e.path for e in raised.value.errors] == ["classes", "images[0].width", "images[0].objects[0].box"]
    gt.write_text(json.dumps({"format": "aidi-gt/1", "task": "detection", "classes": ["car"], "images": [
        {"id": "0", "width": 9, "height": 9, "objects": [{"class": "bus", "box": [1, 1, 5, 5]}]},
        {"id": 0, "width": 9, "height": 9}]}))
    with pytest.raises(SpecError) as raised:
        evaluate.load_ground_truth(gt)
    assert [str(e) for e in raised.value.errors] == [
        "images[0].objects[0].class: unknown class 'bus'; the file's classes are ['car']",
        "images[1].id: image id '0' appears twice; ids must be unique"]
