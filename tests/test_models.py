"""`hitc model` and `hitc evaltask` against both dataspace backends (SeaweedFS S3 and a local folder)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest
import yaml

from aidi.api.errors import SpecError
from aidi.cli import hitc, traincli
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.dataspace.registry import ModelRegistry
from aidi.errors import IntegrityError, UsageError
from aidi.evaluate import task as evaltask
from tests.test_evaluate import hand_case

NAME = "adasmini_4pe_multitask"


@pytest.fixture(params=["s3", "local"])
def config_file(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("ENDPOINT", "BUCKET", "ACCESS_KEY", "SECRET_KEY"):
        monkeypatch.delenv(f"AIDI_DATASPACE_{key}", raising=False)
    if request.param == "local":
        config = DataspaceConfig.local(tmp_path / "dataspace")
    else:
        s3 = request.getfixturevalue("s3_server")
        config = DataspaceConfig(endpoint=s3.endpoint, bucket=f"m-{uuid.uuid4().hex[:12]}", access_key=s3.access_key,
                                 secret_key=s3.secret_key)
    open_dataspace(config).store.check(create=True)
    return config.save(tmp_path / "olympus.yaml")


def run_hitc(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = hitc.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def model_folder(root: Path) -> Path:
    files = {"fusion-bn-c2-export-last-symbol.json": b'{"nodes": []}',
             "fusion-bn-c2-export-last-0000.params": bytes(range(256)) * 64,
             "int-inference-export-last-symbol.json": b'{"nodes": [1]}',
             "int-inference-export-last-0000.params": b"\x01" * 5000,
             "with-bn-0001.params": b"checkpoint, not released"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def write_append_yaml(path: Path, model_path: str, **optional: object) -> Path:
    path.write_text(yaml.safe_dump({"REQUIRED": {"MODEL_NAME": NAME, "MODEL_PATH": model_path},
                                    "OPTIONAL": optional}))
    return path


def test_append_list_show_download_round_trip(tmp_path: Path, config_file: Path):
    from aidi import evaluate

    outcome = evaluate.evaluate(*hand_case(), out_dir=tmp_path / "eval")
    model_folder(tmp_path / "output")
    spec = write_append_yaml(tmp_path / "model_append.yaml", "./output",
                             FILES=["fusion-bn-c2-export-last-*", "int-inference-export-last-*"],
                             SOURCE_JOB="adasmini-4pe", METRICS={"final_loss": 0.42},
                             EVAL_RESULTS={"vehicle": "eval/results.json"}, DESCRIPTION="first release")
    code, out, err = run_hitc("model", "append", "-f", str(spec), "-C", str(config_file), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["version"] == "v1" and record["source_job"] == "adasmini-4pe"
    stored = {f["path"]: f["md5"] for f in record["files"]}
    assert stored == {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (tmp_path / "output").iterdir()
                      if p.name != "with-bn-0001.params"}
    assert record["metrics"]["final_loss"] == 0.42
    assert record["metrics"]["vehicle"]["map_all_point"] == pytest.approx(
        outcome.results["summary"]["map_all_point"])

    (tmp_path / "output" / "int-inference-export-last-0000.params").write_bytes(b"\x02" * 5000)
    assert run_hitc("model", "append", "-f", str(spec), "-C", str(config_file))[0] == 0
    code, out, _ = run_hitc("model", "list", "-C", str(config_file), "--json")
    assert [(r["name"], r["version"]) for r in json.loads(out)] == [(NAME, "v1"), (NAME, "v2")]
    code, out, _ = run_hitc("model", "show", NAME, "-C", str(config_file))
    assert code == 0 and f"{NAME} v2" in out and "vehicle 0.833" in out

    code, _, err = run_hitc("model", "download", NAME, "--version", "v1", "-o", str(tmp_path / "dl"), "-C",
                            str(config_file))
    assert code == 0, err
    assert (tmp_path / "dl" / "int-inference-export-last-0000.params").read_bytes() == b"\x01" * 5000
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(stored)

    code, _, err = run_hitc("model", "show", NAME, "--version", "v7", "-C", str(config_file))
    assert code == 3 and "has no version v7 (its versions: v1, v2)" in err


def test_damaged_file_fails_the_download(tmp_path: Path, config_file: Path):
    ds = open_dataspace(DataspaceConfig.load(config_file))
    registry = ModelRegistry(ds.store)
    folder = model_folder(tmp_path / "m")
    record = registry.append(NAME, [(p.name, p) for p in sorted(folder.iterdir())])
    key = f"models/{NAME}/{record.version}/int-inference-export-last-0000.params"
    ds.store.put_bytes(key, b"\x01" * 4999 + b"\x00")
    with pytest.raises(IntegrityError):
        registry.download(NAME, "latest", tmp_path / "out")
    assert not (tmp_path / "out" / "int-inference-export-last-0000.params").exists()


def test_append_from_a_job_output_in_the_dataspace_and_attach_compiled(tmp_path: Path, config_file: Path):
    ds = open_dataspace(DataspaceConfig.load(config_file))
    model_folder(tmp_path / "job_output" / "export")
    ds.upload_dataset("adasmini_4pe_models", "dataset", tmp_path / "job_output")
    spec = write_append_yaml(tmp_path / "model_append.yaml", "dataspace://adasmini_4pe_models/dataset/latest/export",
                             FILES=["int-inference-export-last-*"])
    code, out, err = run_hitc("model", "append", "-f", str(spec), "-C", str(config_file), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["source"] == "dataspace://adasmini_4pe_models/dataset/v1/export"
    assert sorted(f["path"] for f in record["files"]) == ["int-inference-export-last-0000.params",
                                                           "int-inference-export-last-symbol.json"]
    registry = ModelRegistry(ds.store)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx bytes")
    log = tmp_path / "compile.log"
    log.write_text("max abs diff 0.0\n")
    registry.attach(NAME, "v1", "onnx", [("model.onnx", onnx), ("compile.log", log)], {"check": {"passed": True}})
    with pytest.raises(UsageError, match="write-once"):
        registry.attach(NAME, "v1", "onnx", [("model.onnx", onnx)])
    code, out, _ = run_hitc("model", "show", NAME, "-C", str(config_file))
    assert "compiled onnx" in out and "check passed" in out
    code, _, _ = run_hitc("model", "download", NAME, "-o", str(tmp_path / "dl"), "--with-compiled", "-C",
                          str(config_file))
    assert code == 0 and (tmp_path / "dl" / "compiled" / "onnx" / "model.onnx").read_bytes() == b"onnx bytes"


def test_bad_model_append_files_say_what_to_fix(tmp_path: Path, config_file: Path):
    spec = tmp_path / "model_append.yaml"
    spec.write_text(yaml.safe_dump({"REQUIRED": {"MODEL_NAME": NAME, "MODEL_PATH": "./nowhere"}}))
    code, _, err = run_hitc("model", "append", "-f", str(spec), "-C", str(config_file))
    assert code == 3 and "REQUIRED.MODEL_PATH './nowhere'" in err
    spec.write_text(yaml.safe_dump({"REQUIRED": {"MODEL_NAME": NAME, "MODEL_PATH": "."},
                                    "OPTIONAL": {"SOURCE_JOBS": "x"}}))
    code, _, err = run_hitc("model", "append", "-f", str(spec), "-C", str(config_file))
    assert code == 2 and "OPTIONAL.SOURCE_JOBS: unknown field; did you mean `SOURCE_JOB`?" in err


def write_eval_task(path: Path, **optional: object) -> Path:
    path.write_text(yaml.safe_dump({
        "REQUIRED": {"TASK_NAME": "vehicle-eval", "GT": "dataspace://vehicle_val/gt/latest",
                     "PR": "dataspace://vehicle_val/pr/latest/val_pr.json"},
        "OPTIONAL": {"IOU_THRESHOLD": 0.5, "SCORE_THRESHOLD": 0.75, **optional}}))
    return path


def test_evaltask_runs_locally_from_bound_gt_and_pr(tmp_path: Path, config_file: Path):
    from aidi import evaluate
    from aidi.evaluate.formats import gt_to_json, predictions_to_json, write_json

    ds = open_dataspace(DataspaceConfig.load(config_file))
    gt, pr = hand_case()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.txt").write_text("the image dataset the annotations belong to")
    ds.upload_dataset("vehicle_val", "valset", tmp_path / "images")
    write_json(tmp_path / "val_gt.json", gt_to_json(gt, tmp_path))
    write_json(tmp_path / "val_pr.json", predictions_to_json(pr, tmp_path))
    ds.bind_annotations("vehicle_val", "gt", tmp_path / "val_gt.json")
    ds.bind_annotations("vehicle_val", "pr", tmp_path / "val_pr.json")
    task = write_eval_task(tmp_path / "eval_task.yaml")
    code, out, err = run_hitc("evaltask", "submit", "-f", str(task), "--local", "-C", str(config_file), "--json")
    assert code == 0, err
    answer = json.loads(out)
    expected = evaluate.evaluate(gt, pr, score_threshold=0.75).results["summary"]
    assert answer["summary"] == expected and answer["output"] == "vehicle-eval:dataset:v1"
    manifest = ds.resolve("vehicle-eval", "dataset", "latest")
    assert {"results.json", "report.html"} <= {f.path for f in manifest.files}


def test_evaltask_becomes_a_cpu_trainjob_running_aidi_eval(tmp_path: Path):
    task = evaltask.load_eval_task(write_eval_task(tmp_path / "eval_task.yaml", OUTPUT="vehicle_eval",
                                                   DOCKER_IMAGE="aidi/jobimage:1.0"))
    wire = evaltask.eval_trainjob(task, "team-a").to_wire()
    spec = wire["spec"]
    assert spec["command"] == ["aidi", "eval", "--gt", "dataspace://vehicle_val/gt/latest", "--pr",
                               "dataspace://vehicle_val/pr/latest/val_pr.json", "--iou", "0.5", "--score-thr", "0.75",
                               "--out", "/data_space/output"]
    assert spec["gpusPerWorker"] == 0 and spec["image"] == "aidi/jobimage:1.0"
    assert spec["dataSpace"]["output"] == {"name": "vehicle_eval", "type": "dataset"}
    assert wire["metadata"] == {"name": "vehicle-eval", "namespace": "team-a", "labels": {"aidi.io/kind": "evaltask"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"REQUIRED": {"TASK_NAME": "Vehicle_Eval", "GT": "gt.json", "PR": "x"}}))
    with pytest.raises(SpecError) as raised:
        evaltask.load_eval_task(bad)
    # Every problem at once, each at its field.
    assert [str(e).split(":")[0] for e in raised.value.errors] == ["REQUIRED.TASK_NAME", "REQUIRED.GT", "REQUIRED.PR"]
    assert "REQUIRED.TASK_NAME: 'Vehicle_Eval': use lower-case letters" in raised.value.render()
    assert "REQUIRED.GT: 'gt.json': the job reads from the dataspace" in raised.value.render()


async def test_evaltask_submit_creates_the_job_on_the_cluster(tmp_path: Path, kube_api):
    cluster = tmp_path / "gpucluster.yaml"
    assert traincli.main(["init", "-t", "team-a:test-token", "--server", str(kube_api.url), "-c", str(cluster)]) == 0
    task = write_eval_task(tmp_path / "eval_task.yaml")
    code, out, err = await asyncio.to_thread(run_hitc, "evaltask", "submit", "-f", str(task), "-c", str(cluster))
    assert code == 0, err
    assert "evaltask vehicle-eval submitted" in out
    from aidi.cluster import gpucluster
    from aidi.cluster.kube import KubeJobClient

    client = KubeJobClient.for_cluster(gpucluster.resolve(cluster))
    job = await asyncio.to_thread(client.get_job, "vehicle-eval")
    assert job["spec"]["command"][:2] == ["aidi", "eval"] and job["spec"]["gpusPerWorker"] == 0
    assert job["metadata"]["labels"]["aidi.io/kind"] == "evaltask"


def test_evaltask_pod_runs_aidi_eval_with_the_dataspace_and_syncs_its_output(tmp_path: Path):
    from aidi.jobs import podspec

    task = evaltask.load_eval_task(write_eval_task(tmp_path / "eval_task.yaml"))
    job = evaltask.eval_trainjob(task, "team-a")
    job.metadata.uid = "uid-1"
    [pod] = podspec.build_pods(job, podspec.PodSettings(dataspace_endpoint="http://minio:9000"))
    main, *others = pod["spec"]["containers"]
    assert "aidi eval --gt dataspace://vehicle_val/gt/latest" in " ".join(main["command"])
    assert "nvidia.com/gpu" not in json.dumps(main.get("resources", {}))
    env = {e["name"] for e in main["env"]}
    assert {"AIDI_DATASPACE_ENDPOINT", "AIDI_DATASPACE_ACCESS_KEY", "AIDI_DATASPACE_SECRET_KEY"} <= env
    assert others and "vehicle-eval" in json.dumps(others[0]["command"])   # the results become a dataset version
    assert not pod["spec"].get("initContainers")                             # no code package to fetch


def test_lineage_job_to_datasets_to_model_and_back(tmp_path: Path, config_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    """The fetch step records the exact version behind `latest`; the model keeps it; `--used-by` reads it back;
    reports stored later show beside the recorded metrics, and `list --metrics` compares versions."""
    from aidi import evaluate
    from aidi.jobs import podsteps

    config = DataspaceConfig.load(config_file)
    ds = open_dataspace(config)
    for n in (1, 2, 3):  # v3 is what `latest` means when the job fetches
        (tmp_path / f"train{n}").mkdir()
        (tmp_path / f"train{n}" / "vehicle.txt").write_bytes(bytes([n]) * 100)
        ds.upload_dataset("adasmini_4pe", "trainset", tmp_path / f"train{n}")
    job_env = {"JOB_NAME": "adasmini-4pe", "AIDI_JOB_NAMESPACE": "team-a", "AIDI_JOB_UID": "uid-42",
               "AIDI_JOB_IMAGE": "aidi/jobimage:1.0", "AIDI_CODE_SHA256": "ab" * 32}
    for key, value in job_env.items():
        monkeypatch.setenv(key, value)
    output = model_folder(tmp_path / "pod_output")
    podsteps.fetch_data(["adasmini_4pe:trainset:latest"], tmp_path / "input", config=config, jobs=2,
                        record=output / "aidi-job.json")
    ds.upload_dataset("adasmini_4pe_models", "dataset", output)  # what the sync step does

    spec = write_append_yaml(tmp_path / "model_append.yaml", "dataspace://adasmini_4pe_models/dataset/latest",
                             FILES=["fusion-bn-c2-export-last-*"])
    code, out, err = run_hitc("model", "append", "-f", str(spec), "-C", str(config_file), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["source_job"] == "adasmini-4pe"  # from the job record: the yaml named none
    assert record["lineage"] == {
        "job": {"name": "adasmini-4pe", "namespace": "team-a", "uid": "uid-42", "image": "aidi/jobimage:1.0",
                "code_sha256": "ab" * 32},
        "datasets": [{"name": "adasmini_4pe", "type": "trainset", "version": "v3", "requested": "latest"}],
        "output": {"name": "adasmini_4pe_models", "type": "dataset", "version": "v1"}}

    code, out, _ = run_hitc("model", "show", NAME, "-C", str(config_file))
    assert "trained by job: team-a/adasmini-4pe (uid uid-42), image aidi/jobimage:1.0" in out
    assert "trained on: adasmini_4pe/trainset v3 (asked for latest)" in out
    assert "from output: adasmini_4pe_models/dataset v1" in out

    code, out, _ = run_hitc("dataspace", "show", "adasmini_4pe", "-t", "trainset", "--version", "v3", "--used-by",
                            "-C", str(config_file))
    assert code == 0 and f"{NAME}" in out and "v1" in out and "uid-42" in out
    code, out, _ = run_hitc("dataspace", "show", "adasmini_4pe", "-t", "trainset", "--version", "v2", "--used-by",
                            "-C", str(config_file))
    assert code == 0 and "no model version records adasmini_4pe/trainset v2" in out
    code, _, err = run_hitc("dataspace", "show", "adasmini_4pe", "--used-by", "-C", str(config_file))
    assert code == 2 and "--used-by needs the dataset's type" in err

    # A report scored after the release is stored with the version (write-once) and served file by file.
    evaluate.evaluate(*hand_case(), out_dir=tmp_path / "eval")
    code, out, err = run_hitc("model", "report", NAME, "--version", "v1", "--label", "vehicle", "--eval-dir",
                              str(tmp_path / "eval"), "-C", str(config_file))
    assert code == 0, err
    assert "stored report vehicle" in out and "vehicle 0.833" in out
    code, _, err = run_hitc("model", "report", NAME, "--label", "vehicle", "--eval-dir", str(tmp_path / "eval"),
                            "-C", str(config_file))
    assert code == 2 and "write-once" in err
    registry = ModelRegistry(ds.store)
    html = registry.report_file(NAME, "v1", "vehicle", "report.html")
    assert html == (tmp_path / "eval" / "report.html").read_bytes()
    with pytest.raises(Exception, match="no report file"):
        registry.report_file(NAME, "v1", "vehicle", "../_model.json")
    assert [m.version for m in registry.by_job("adasmini-4pe", "uid-42")] == ["v1"]
    assert registry.by_job("adasmini-4pe", "another-run-of-that-name") == []

    # A second version without the report: the comparison table has its column, '-' where a version lacks it.
    assert registry.append(NAME, [(p.name, p) for p in sorted(output.glob("int-*"))],
                           metrics={"seg_lane": {"task": "parsing", "miou": 0.61}}).version == "v2"
    code, out, _ = run_hitc("model", "list", "--metrics", "-C", str(config_file))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "vehicle", "mAP", "seg_lane", "mIoU", "SIZE", "JOB", "CREATED"]
    assert lines[1].split()[:4] == [NAME, "v1", "0.8333", "-"] and lines[2].split()[:4] == [NAME, "v2", "-", "0.61"]
