"""The demo, reduced (three scenes predicted and evaluated, fewer images in the compile check), end to end;
checks its artefacts.

What runs is `make demo`'s driver: the real CLIs as subprocesses, a real local cluster, real MXNet
training (`--pipeline-test`), ONNX compile with onnxruntime. About 70 s on 2 quiet cores.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.demo import DATASET, JOB, MODEL_NAME, OUTPUT_DATASET, Demo

mx = pytest.importorskip("mxnet")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.slow

SCENES = ("cyclist", "pedestrian", "default_parsing")
# The default sample: the pipeline test trains on the val splits (about 20 images per scene), so fewer
# images leave too little to learn from for a stable AP (100 per scene gave 0.02–0.26).
IMAGES = 200
# Mean AP@0.5 (all-point) of the two detection scenes. Pipeline-test training is reproducible (bit-identical
# parameters run to run on one machine): seed 0 measured 0.895 (1 thread, as here; 0.940 with the loader
# before whole-pixel crops). The margin covers another CPU's kernels; an untrained network scores 0.00
# (docs/phase2.md), the old 4-epoch schedule 0.23–0.76.
MIN_AP = 0.7
# default_parsing mIoU (12 classes): measured 0.336 (0.295 with the earlier loader); predicting the most
# common class everywhere scores 0.022. The lane scene is not the check here: the pipeline test's few
# iterations leave its head predicting background everywhere (mIoU 0.238 = background IoU / 4), which
# a floor on its mIoU could not tell from learning; tests/test_predict_compile.py trains it longer.
MIN_MIOU = 0.2
CHECKPOINTS = ("with-bn-0001.params", "with-bn-last-0000.params", "with-bn-export-last-symbol.json",
               "fusion-bn-c1-export-last-symbol.json", "fusion-bn-c2-export-last-symbol.json",
               "fusion-bn-c2-export-last-0000.params", "int-inference-export-last-symbol.json",
               "int-inference-export-last-0000.params", "metrics.json")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    workdir = tmp_path_factory.mktemp("demo")
    run = Demo(workdir, images=IMAGES, scenes=SCENES, samples=4, out=io.StringIO())
    try:
        assert run.run_all() == 0
    except Exception:
        print(run.out.getvalue()[-6000:])  # type: ignore[attr-defined]
        raise
    return run


def _dataspace(demo: Demo) -> object:
    return open_dataspace(DataspaceConfig(endpoint=f"file://{demo.workdir / 'dataspace'}"))


def test_packed_rec_files_read_back_with_mxnet(demo: Demo) -> None:
    scenes = sorted((demo.workdir / "data" / "rec").glob("*/manifest.json"))
    assert len(scenes) == 8
    total = 0
    for manifest_path in scenes:
        manifest = json.loads(manifest_path.read_text())
        for split in ("train", "val"):
            rec = manifest_path.parent / f"{split}.rec"
            reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
            try:
                headers = [mx.recordio.unpack(reader.read_idx(k))[0] for k in reader.keys]
            finally:
                reader.close()
            assert len(headers) == manifest["counts"][split], rec
            if manifest["task"] == "detection":
                assert all(h.label[0] == 4 and h.label[1] == 5 for h in headers), rec  # header/object width
            total += len(headers)
    assert total == demo.figures["records"] == 8 * IMAGES


def test_dataset_version_is_in_the_dataspace(demo: Demo) -> None:
    ds = _dataspace(demo)
    try:
        manifest = ds.resolve(DATASET, "trainset")  # type: ignore[attr-defined]
    finally:
        ds.close()  # type: ignore[attr-defined]
    assert manifest.version == demo.figures["dataset_version"] == "v1"
    assert manifest.records == 8 * IMAGES
    assert {f.path.split("/")[0] for f in manifest.files} == {
        "cyclist", "default_parsing", "lane_parsing", "pedestrian", "traffic_light", "traffic_sign", "vehicle",
        "vehicle_rear"}


def test_job_succeeded_with_the_checkpoints_of_the_four_steps(demo: Demo) -> None:
    job = json.loads((demo.workdir / "cluster" / "namespaces" / "default" / "trainjobs" / JOB / "job.json")
                     .read_text())
    assert job["status"]["phase"] == "Succeeded" and job["status"]["reason"] == "AllWorkersSucceeded"
    assert job["spec"]["gpusPerWorker"] == 4  # the example, unchanged; run on the CPU here
    runner = json.loads((demo.workdir / "cluster" / "namespaces" / "default" / "trainjobs" / JOB / "runner.json")
                        .read_text())
    log = (demo.workdir / "cluster" / "namespaces" / "default" / "trainjobs" / JOB / "pods" / f"{JOB}-worker-0"
           / "logs" / "trainer.log").read_text()
    assert "done: with-bn, fusion-bn-c1, fusion-bn-c2, int-inference" in log
    ds = _dataspace(demo)
    try:
        stored = {f.path for f in ds.resolve(OUTPUT_DATASET, "dataset").files}  # type: ignore[attr-defined]
    finally:
        ds.close()  # type: ignore[attr-defined]
    for name in CHECKPOINTS:
        assert name in stored and (demo.workdir / "output" / name).is_file(), name
    metrics = json.loads((demo.workdir / "output" / "metrics.json").read_text())
    assert metrics["pipeline_test"] is True
    if runner["ctx"] == "cpu":  # no GPU here: the runner made the example's run.sh pass --ctx cpu
        assert metrics["ctx"] == ["cpu(0)"]
    losses = metrics["steps"]["with-bn"]["train"]["epoch_losses"]
    assert losses[-1] < losses[0]  # it learnt something
    assert demo.figures["final_loss"] == metrics["steps"]["fusion-bn-c2"]["train"]["epoch_losses"][-1]


def test_evaluation_scores_above_the_threshold(demo: Demo) -> None:
    aps = demo.figures["ap_by_scene"]
    assert set(aps) == {"cyclist", "pedestrian"}
    assert demo.figures["ap"] == sum(aps.values()) / 2 >= MIN_AP, aps
    assert demo.figures["miou_by_scene"]["default_parsing"] >= MIN_MIOU
    for scene in SCENES:
        assert (demo.workdir / "eval" / scene / "report.html").is_file()


def test_model_version_has_md5s_of_the_trained_files(demo: Demo) -> None:
    version = demo.figures["model_version"]
    record = json.loads((demo.workdir / "dataspace" / "models" / MODEL_NAME / version / "_model.json").read_text())
    files = {f["path"]: f for f in record["files"]}
    assert "fusion-bn-c2-export-last-0000.params" in files and "int-inference-export-last-symbol.json" in files
    for path, entry in files.items():
        assert entry["md5"] == hashlib.md5((demo.workdir / "output" / path).read_bytes()).hexdigest(), path
    assert record["source_job"] == JOB   # from the job record in the outputs: model_append.yaml names none


def test_the_demo_showed_progress_and_the_local_runner_kept_it(demo: Demo) -> None:
    """docs/progress.md on the local cluster: the live lines while it ran, status.progress at the end, the
    records synced with the outputs, and links to the curves and the reports at the end of the demo."""
    from aidi.jobs import progress

    said = demo.out.getvalue()  # type: ignore[attr-defined]
    assert "progress:   step 1/4 with-bn, epoch" in said and "progress:   step 3/4 fusion-bn-c2, epoch" in said
    assert "step 4/4 int-inference — all steps written" in said
    job = json.loads((demo.workdir / "cluster" / "namespaces" / "default" / "trainjobs" / JOB / "job.json")
                     .read_text())
    assert job["status"]["progress"]["step"] == "4/4 done" and job["status"]["progress"]["eta"] == "0:00:00"
    stored = progress.read_file(demo.workdir / "output" / progress.FILE_NAME)
    assert [r["name"] for r in stored if r["kind"] == "val"] == ["with-bn", "fusion-bn-c1", "fusion-bn-c2"]
    assert stored[-1]["kind"] == "done"
    assert f"/jobs/{JOB} (progress, curves, lineage)" in said
    assert str(demo.workdir / "eval" / "cyclist" / "report.html") in said


def test_lineage_runs_both_ways(demo: Demo) -> None:
    version = demo.figures["model_version"]
    record = json.loads((demo.workdir / "dataspace" / "models" / MODEL_NAME / version / "_model.json").read_text())
    lineage = record["lineage"]
    # The job asked for latest; the record names the version it really fetched.
    assert lineage["datasets"] == [{"name": DATASET, "type": "trainset", "version": demo.figures["dataset_version"],
                                    "requested": "latest"}]
    assert lineage["job"]["name"] == JOB and lineage["job"]["uid"] and len(lineage["job"]["code_sha256"]) == 64
    assert lineage["output"]["name"] == OUTPUT_DATASET
    # The reports are stored with the version, report.html and all.
    assert set(demo.figures["reports"]) == set(SCENES)
    assert (demo.workdir / "dataspace" / "models" / MODEL_NAME / version / "eval" / "cyclist" / "report.html").is_file()
    said = demo.out.getvalue()  # type: ignore[attr-defined]
    assert f"trained on: {DATASET}/trainset {demo.figures['dataset_version']} (asked for latest)" in said
    assert f"model versions trained on {DATASET}/trainset {demo.figures['dataset_version']}:" in said


def test_onnx_compile_check_passed(demo: Demo) -> None:
    report = json.loads((demo.workdir / "compiled" / "compile.json").read_text())
    assert demo.figures["compile_passed"] and report["check"]["passed"] is True
    # The verdict rests on real comparisons: every branch's outputs, values and not only argmaxes (an
    # empty detection output on both sides would "agree"), and detections to agree on.
    outputs = report["check"]["outputs"]
    assert len(outputs) == 6
    assert sum(out.get("detections_mxnet", 0) for out in outputs.values()) > 0, outputs
    for name, out in outputs.items():
        assert out["max_rel_diff"] < 0.05, (name, out)  # measured ~1e-7: the same integer arithmetic
        assert out.get("detection_agreement", out.get("pixel_agreement")) >= 0.99, (name, out)
    onnx.checker.check_model(onnx.load(str(demo.workdir / "compiled" / "model.onnx")))
    stored = demo.workdir / "dataspace" / "models" / MODEL_NAME / demo.figures["model_version"] / "compiled" / "onnx"
    assert (stored / "model.onnx").is_file()
