"""`traincli validate`: both forms load; every bad input is reported at once with its field and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aidi.api.loader import load_file
from aidi.cli import traincli
from tests.conftest import REPO

GOOD = yaml.safe_load((REPO / "examples" / "train_job.yaml").read_text())


def write_job(tmp_path: Path, required: dict | None = None, optional: dict | None = None,
              drop: tuple[str, ...] = ()) -> Path:
    doc = {"REQUIRED": {**GOOD["REQUIRED"], **(required or {})},
           "OPTIONAL": {**GOOD["OPTIONAL"], **(optional or {})}}
    for key in drop:
        doc["REQUIRED"].pop(key)
    path = tmp_path / "train_job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = traincli.main(["validate", "-f", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_aidi_form_prints_the_cr(capsys) -> None:
    code, out, _ = validate(REPO / "examples" / "train_job.yaml", capsys, "-o", "json")
    assert code == 0
    manifest = json.loads(out)
    assert manifest["kind"] == "TrainJob" and manifest["metadata"]["name"] == "adasmini-4pe"
    assert manifest["spec"]["command"] == ["bash", "-c", "${WORKING_PATH}/run.sh"]
    assert manifest["spec"]["activeDeadlineSeconds"] == 600 * 60
    assert manifest["spec"]["dataSpace"]["inputs"] == [
        {"name": "adasmini_4pe", "type": "trainset", "version": "latest"}]
    assert "change-me" not in out, "the job password must never appear in the CR"


def test_both_forms_describe_the_same_job() -> None:
    aidi = load_file(REPO / "examples" / "train_job.yaml").job.spec
    native = load_file(REPO / "examples" / "trainjob.yaml").job.spec
    for field in ("command", "workers", "gpus_per_worker", "priority", "active_deadline_seconds", "image",
                  "project_id"):
        assert getattr(aidi, field) == getattr(native, field), field
    assert aidi.data_space.inputs == native.data_space.inputs
    assert aidi.data_space.output.name == native.data_space.output.name


def test_missing_job_name(tmp_path, capsys) -> None:
    code, _, err = validate(write_job(tmp_path, drop=("JOB_NAME",)), capsys)
    assert code == 2
    assert "REQUIRED.JOB_NAME: required field is missing; add `JOB_NAME:` under REQUIRED" in err


def test_min_workers_above_max(tmp_path, capsys) -> None:
    code, _, err = validate(write_job(tmp_path, {"WORKER_MIN_NUM": 3, "WORKER_MAX_NUM": 2}), capsys)
    assert code == 2
    assert "REQUIRED.WORKER_MIN_NUM: WORKER_MIN_NUM (3) is greater than WORKER_MAX_NUM (2)" in err
    assert "set WORKER_MIN_NUM <= WORKER_MAX_NUM" in err


@pytest.mark.parametrize(("value", "expected"), [
    (2.5, "expected a whole number, got 2.5"),
    ("four", "expected a whole number, got 'four'"),
    (17, "17 is out of range"),
    (-1, "-1 is out of range"),
])
def test_gpu_per_worker_must_be_0_to_16(tmp_path, capsys, value, expected) -> None:
    code, _, err = validate(write_job(tmp_path, {"GPU_PER_WORKER": value}), capsys)
    assert code == 2
    assert f"REQUIRED.GPU_PER_WORKER: {expected}" in err
    assert "an integer from 0 to 16" in err


@pytest.mark.parametrize("value", [0, 6])
def test_priority_must_be_1_to_5(tmp_path, capsys, value) -> None:
    code, _, err = validate(write_job(tmp_path, optional={"PRIORITY": value}), capsys)
    assert code == 2
    assert f"OPTIONAL.PRIORITY: {value} is out of range" in err
    assert "an integer from 1 (lowest) to 5 (highest)" in err


def test_job_name_not_dns_label_suggests_a_fix(tmp_path, capsys) -> None:
    code, _, err = validate(write_job(tmp_path, {"JOB_NAME": "AdasMini_4PE"}), capsys)
    assert code == 2
    assert "REQUIRED.JOB_NAME: 'AdasMini_4PE' is not a valid job name" in err
    assert 'use JOB_NAME: "adasmini-4pe"' in err


def test_unknown_keys_get_did_you_mean(tmp_path, capsys) -> None:
    path = write_job(tmp_path, {"GPU_PER_WORKR": 2}, {"WALLTIME": 10})
    code, _, err = validate(path, capsys)
    assert code == 2
    assert "REQUIRED.GPU_PER_WORKR: unknown field; did you mean `GPU_PER_WORKER`?" in err
    assert "OPTIONAL.WALLTIME: unknown field; did you mean `WALL_TIME`?" in err


def test_unknown_cr_field_gets_did_you_mean(tmp_path, capsys) -> None:
    doc = yaml.safe_load((REPO / "examples" / "trainjob.yaml").read_text())
    doc["spec"]["gpuPerWorker"] = doc["spec"].pop("gpusPerWorker")
    doc["spec"]["workers"] = {"min": 4, "max": 2}
    path = tmp_path / "trainjob.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = validate(path, capsys)
    assert code == 2
    assert "spec.gpuPerWorker: unknown field; did you mean `gpusPerWorker`?" in err
    assert "spec.workers: workers.min (4) is greater than workers.max (2)" in err


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys) -> None:
    path = tmp_path / "train_job.yaml"
    path.write_text("REQUIRED:\n  JOB_NAME: a\n  GPU_PER_WORKER: [1, 2\nOPTIONAL: {}\n")
    code, _, err = validate(path, capsys)
    assert code == 2
    assert err.startswith(f"{path}:4:")
    assert "YAML syntax error" in err


def test_every_error_is_reported_at_once(tmp_path, capsys) -> None:
    path = write_job(tmp_path, {"JOB_NAME": "Bad_Name", "WORKER_MIN_NUM": 5, "WORKER_MAX_NUM": 1,
                                "GPU_PER_WORKER": 99}, {"PRIORITY": 9, "WALLTIME": 1})
    code, _, err = validate(path, capsys)
    assert code == 2
    assert "5 problems" in err
    for field in ("JOB_NAME", "WORKER_MIN_NUM", "GPU_PER_WORKER", "PRIORITY", "WALLTIME"):
        assert f".{field}:" in err


def test_password_never_echoed_in_errors(tmp_path, capsys) -> None:
    code, out, err = validate(write_job(tmp_path, {"JOB_PASSWD": 123456789}), capsys)
    assert code == 2
    assert "REQUIRED.JOB_PASSWD" in err
    assert "123456789" not in out + err


def test_not_a_job_file(tmp_path, capsys) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("foo: bar\n")
    code, _, err = validate(path, capsys)
    assert code == 2
    assert "not a job file" in err and "REQUIRED/OPTIONAL" in err


def test_errors_inside_maps_name_the_allowed_fields_of_the_value(tmp_path: Path) -> None:
    """A map's keys are the user's (a cluster's name, a branch's name): the fields allowed are its value's."""
    from aidi.api.errors import SpecError
    from aidi.cluster import gpucluster

    config = tmp_path / "gpucluster.yaml"
    config.write_text("current-cluster: a\nclusters:\n  a: {type: kubernets, namspace: x}\n")
    with pytest.raises(SpecError) as raised:
        gpucluster.load(config)
    assert [str(e) for e in raised.value.errors] == [
        "clusters.a.type: 'kubernets' is not one of 'kubernetes' or 'local'",
        "clusters.a.namspace: unknown field. Allowed here: appid, appkey, server, certificate-authority, insecure, "
        "type, workdir, env"]
