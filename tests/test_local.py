"""The local cluster: `traincli` against `type: local`, pods from aidi.jobs.podspec run as real local processes.

The job scripts here are small shell scripts (no MXNet): they print what they see and write outputs, so
each test checks what really reached the processes — paths, environment, files, signals.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidi.api import trainjob as tj
from aidi.cli import traincli
from aidi.cluster import gpucluster
from aidi.cluster.client import connect
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.local import devices
from aidi.local.pods import PathMap
from tests.test_podsteps import use_s3_dataspace

PASSWORD = "local-test-pw-9f3a"

RUN_SH = """\
#!/usr/bin/env bash
set -euo pipefail
echo "working path: $WORKING_PATH"
echo "ctx: ${AIDI_CTX:-unset} output: $AIDI_OUTPUT_DIR role: $AIDI_ROLE"
echo "dmlc: ${DMLC_ROLE:-none} ${DMLC_PS_ROOT_URI:-} ${DMLC_PS_ROOT_PORT:-}"
root=$(sed -n 's/^root: //p' "$WORKING_PATH/datasets.yaml")
echo "root: $root"
[[ "$AIDI_ROLE" != worker ]] || cat "$root/scene/train.txt"  # only workers fetch the datasets
if [[ -n "${WAIT_FOR:-}" ]]; then
    echo "waiting for $WAIT_FOR"
    while [[ ! -e "$WAIT_FOR" ]]; do sleep 0.2; done
fi
[[ "${FAIL_WITH:-0}" == 0 ]] || { echo "failing on purpose"; exit "$FAIL_WITH"; }
if [[ "${AIDI_ROLE}" == worker ]]; then
    mkdir -p /data_space/output/ckpt
    echo "weights of $JOB_NAME" > /data_space/output/ckpt/model.params
fi
"""


def make_job(tmp_path: Path, name: str, *, workers: int = 1, gpus: int = 2) -> Path:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / "run.sh").write_text(RUN_SH)
    (code / "run.sh").chmod(0o755)
    (code / "datasets.yaml").write_text("root: /data_space/input/toyset/trainset/latest\n")
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump({
        "REQUIRED": {"JOB_NAME": name, "JOB_PASSWD": PASSWORD, "UPLOAD_DIR": f"./code-{name}",
                     "PROJECT_ID": "P1", "WORKER_MIN_NUM": workers, "WORKER_MAX_NUM": workers,
                     "GPU_PER_WORKER": gpus, "RUN_SCRIPTS": "${WORKING_PATH}/run.sh"},
        "OPTIONAL": {"DATA_SPACE": {"DATA_TYPE": "trainset", "INPUT": "toyset", "OUTPUT": "toy_models"}},
    }))
    return job


@pytest.fixture()
def local_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A `type: local` cluster in gpucluster.yaml (via $AIDI_GPUCLUSTER_CONFIG) with its work folder.

    Jobs a failed test leaves running are deleted (their processes stopped) afterwards."""
    config = tmp_path / "gpucluster.yaml"
    config.write_text(yaml.safe_dump({"current-cluster": "here",
                                      "clusters": {"here": {"type": "local", "workdir": "cluster"}}}))
    monkeypatch.setenv("AIDI_GPUCLUSTER_CONFIG", str(config))
    yield tmp_path / "cluster"
    client = connect(gpucluster.resolve(config))
    for job in client.list_jobs():
        client.delete_job(job["metadata"]["name"])


def use_file_dataspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    for var in ("BUCKET", "ACCESS_KEY", "SECRET_KEY"):
        monkeypatch.delenv(f"AIDI_DATASPACE_{var}", raising=False)
    monkeypatch.setenv("AIDI_DATASPACE_ENDPOINT", f"file://{tmp_path / 'dataspace'}")
    return DataspaceConfig.from_env()


def upload_toyset(config: DataspaceConfig, tmp_path: Path) -> None:
    data = tmp_path / "toyset" / "scene"
    data.mkdir(parents=True)
    (data / "train.txt").write_text("the packed scene\n")
    ds = open_dataspace(config)
    try:
        ds.upload_dataset("toyset", "trainset", tmp_path / "toyset")
    finally:
        ds.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = traincli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status(capsys: pytest.CaptureFixture[str], job: str) -> dict[str, Any]:
    code, out, _ = cli(capsys, "status", job, "--json")
    assert code == 0
    return json.loads(out)


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def job_file(cluster: Path, name: str) -> dict[str, Any]:
    return json.loads((cluster / "namespaces" / "default" / "trainjobs" / name / "job.json").read_text())


# ------------------------------------------------------------------------------------------ unit


def test_path_map_rewrites_whole_mount_paths_only(tmp_path: Path) -> None:
    paths = PathMap({"/job/code": tmp_path / "code", "/data_space/input": tmp_path / "in"})
    assert paths.rewrite("/job/code/run.sh") == f"{tmp_path}/code/run.sh"
    assert paths.rewrite("root: /data_space/input/a/b") == f"root: {tmp_path}/in/a/b"
    assert paths.rewrite('cd "/job/code" && ls /job/code') == f'cd "{tmp_path}/code" && ls {tmp_path}/code'
    for untouched in ("/job/codex", "/x/job/code", "${WORKING_PATH}/run.sh", "/data_space/inputs", "job/code"):
        assert paths.rewrite(untouched) == untouched


def test_ctx_is_cpu_without_gpus_and_the_first_ids_with_too_few() -> None:
    assert devices.ctx_for(4, available=0) == "cpu"
    assert devices.ctx_for(4, available=2) == "0,1"
    assert devices.ctx_for(4, available=8) is None  # the run script's own --ctx stands
    assert devices.ctx_for(0, available=0) is None


# ------------------------------------------------------------------------------------ whole jobs


def test_submit_runs_the_job_from_the_operator_pod_spec(tmp_path: Path, local_cluster: Path, s3_server,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = use_s3_dataspace(s3_server, monkeypatch)
    upload_toyset(config, tmp_path)
    code, out, _ = cli(capsys, "submit", "-f", str(make_job(tmp_path, "toy")))
    assert code == 0 and "submitted TrainJob toy to cluster here" in out
    code, out, err = cli(capsys, "wait", "toy", "--interval", "0.3", "--timeout", "120")
    assert code == 0, (out, err, status(capsys, "toy"))
    assert "toy: Running" in err

    st = status(capsys, "toy")
    assert st["phase"] == "Succeeded" and st["reason"] == "AllWorkersSucceeded"
    assert st["message"] == "1/1 worker succeeded; outputs synced to dataset toy_models (dataset)"
    assert [c["type"] for c in st["conditions"] if c["status"] == "True"] == ["Created", "Succeeded"]
    assert st["workers"] == {"pending": 0, "active": 0, "succeeded": 1, "failed": 0}
    # The status is the operator's model; the pod is the operator's pod with a kubelet-like status.
    tj.TrainJobStatus.model_validate(job_file(local_cluster, "toy")["status"])
    [pod] = st["pods"]
    assert pod["name"] == "toy-worker-0" and pod["phase"] == "Succeeded"

    code, log, _ = cli(capsys, "logs", "toy")
    fs = local_cluster / "namespaces" / "default" / "trainjobs" / "toy" / "pods" / "toy-worker-0" / "fs"
    assert f"working path: {fs}/job/code" in log
    expected_ctx = devices.ctx_for(2) or "unset"
    assert f"ctx: {expected_ctx} output: {fs}/data_space/output role: worker" in log
    assert f"root: {fs}/data_space/input/toyset/trainset/latest" in log  # rewritten in the code's datasets.yaml
    assert "the packed scene" in log  # fetch-data really downloaded the dataset (with the S3 credentials)
    code, fetch_log, _ = cli(capsys, "logs", "toy", "--container", "fetch-code")
    assert "mapped the pod's paths" in fetch_log and "datasets.yaml" in fetch_log

    # The outputs went to the dataspace as the next version of the output dataset, with the job record of
    # what the fetch step really fetched (docs/progress.md, lineage).
    ds = open_dataspace(config)
    try:
        manifest = ds.resolve("toy_models", "dataset")
        record = json.loads(ds.store.get_bytes(ds.version_prefix("toy_models", "dataset", manifest.version)
                                               + "aidi-job.json"))
    finally:
        ds.close()
    assert [f.path for f in manifest.files] == ["aidi-job.json", "ckpt/model.params"]
    assert record["job"]["name"] == "toy" and record["job"]["uid"]
    assert record["inputs"] == [{"name": "toyset", "type": "trainset", "requested": "latest", "version": "v1"}]

    # The password is in the code Secret only: not in the job, the pods, their logs or the runner's log.
    job_dir = local_cluster / "namespaces" / "default" / "trainjobs" / "toy"
    for path in job_dir.rglob("*"):
        if path.is_file() and path.name != "password":
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert oct((local_cluster / "namespaces" / "default" / "secrets" / "toy-code.json").stat().st_mode & 0o777) \
        == "0o600"

    code, out, _ = cli(capsys, "list")
    assert "toy" in out and "Succeeded" in out
    code, out, _ = cli(capsys, "delete", "toy")
    assert code == 0 and "trainjob/toy" in out
    assert not job_dir.exists()
    assert not (local_cluster / "namespaces" / "default" / "secrets" / "toy-code.json").exists()
    assert cli(capsys, "status", "toy")[0] == 3


def test_a_pod_waits_for_its_code_secret_as_a_kubelet_does(tmp_path: Path, local_cluster: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """traincli creates the job first and its password Secret after it: a pod started in between must wait for
    the Secret (a kubelet retries CreateContainerConfigError), not fail the job."""
    from aidi.local.client import LocalJobClient

    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    put = LocalJobClient.put_password_secret

    def late_put(self: LocalJobClient, *args: Any, **kwargs: Any) -> None:
        # Long enough for the runner to start the pod and find no Secret.
        pods = local_cluster / "namespaces" / "default" / "trainjobs" / "late" / "pods"
        wait_until(lambda: any(pods.glob("*/pod.json")), timeout=60)
        time.sleep(1.0)
        put(self, *args, **kwargs)

    monkeypatch.setattr(LocalJobClient, "put_password_secret", late_put)
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "late")))[0] == 0
    code, out, err = cli(capsys, "wait", "late", "--interval", "0.3", "--timeout", "120")
    st = status(capsys, "late")
    assert code == 0, (out, err, st)
    assert st["restarts"] == 0 and not st.get("last_failure"), st  # waited, not failed and restarted


def test_a_failing_worker_fails_the_job_with_its_log(tmp_path: Path, local_cluster: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    monkeypatch.setenv("FAIL_WITH", "3")
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "bad")))[0] == 0
    assert cli(capsys, "wait", "bad", "--interval", "0.3", "--timeout", "120")[0] == 1
    st = status(capsys, "bad")
    assert st["phase"] == "Failed" and st["reason"] == "WorkerFailed"
    assert st["message"].startswith("worker-0 exited with code 3")
    assert st["last_failure"]["exitCode"] == 3 and "failing on purpose" in st["last_failure"]["logTail"]
    assert st["pods"][0]["exit_code"] == 3
    assert cli(capsys, "cancel", "bad")[0] == 2  # a finished job cannot be cancelled


def test_cancel_stops_the_processes_and_resume_runs_it_again(tmp_path: Path, local_cluster: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    gate = tmp_path / "go"
    monkeypatch.setenv("WAIT_FOR", str(gate))
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "long")))[0] == 0
    pod_json = local_cluster / "namespaces" / "default" / "trainjobs" / "long" / "pods" / "long-worker-0" / "pod.json"
    wait_until(lambda: pod_json.exists() and "trainer" in json.loads(pod_json.read_text())["local"]["pids"], 60)
    pid = json.loads(pod_json.read_text())["local"]["pids"]["trainer"]
    wait_until(lambda: status(capsys, "long")["phase"] == "Running", 10)

    code, out, _ = cli(capsys, "cancel", "long")
    assert code == 0 and "was Running" in out
    assert _gone(pid)  # the trainer's whole process group
    st = status(capsys, "long")
    assert st["phase"] == "Suspended" and st["cancelled"] and st["pods"] == []
    assert cli(capsys, "wait", "long", "--interval", "0.2")[0] == 125

    gate.touch()
    assert cli(capsys, "resume", "long")[0] == 0
    assert cli(capsys, "wait", "long", "--interval", "0.3", "--timeout", "120")[0] == 0
    conditions = {c["type"]: c for c in status(capsys, "long")["conditions"]}
    assert conditions["Suspended"]["status"] == "False" and conditions["Suspended"]["reason"] == "Resumed"


def test_a_killed_runner_fails_the_job_and_its_processes(tmp_path: Path, local_cluster: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    monkeypatch.setenv("WAIT_FOR", str(tmp_path / "never"))
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "lost")))[0] == 0
    job_dir = local_cluster / "namespaces" / "default" / "trainjobs" / "lost"
    pod_json = job_dir / "pods" / "lost-worker-0" / "pod.json"
    wait_until(lambda: pod_json.exists() and "trainer" in json.loads(pod_json.read_text())["local"]["pids"], 60)
    trainer = json.loads(pod_json.read_text())["local"]["pids"]["trainer"]
    supervisor = json.loads((job_dir / "runner.json").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: status(capsys, "lost")["phase"] == "Failed", 10)
    st = status(capsys, "lost")
    assert st["reason"] == "RunnerLost" and f"pid {supervisor}" in st["message"]
    wait_until(lambda: _gone(trainer), 5)


def _gone(pgid: int) -> bool:
    """No live process left in the group (zombies count as gone: an orphan's zombie waits for init to reap it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def test_parameter_server_pods_find_their_scheduler_on_this_machine(tmp_path: Path, local_cluster: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "ps", workers=2, gpus=0)))[0] == 0
    assert cli(capsys, "wait", "ps", "--interval", "0.3", "--timeout", "120")[0] == 0
    st = status(capsys, "ps")
    assert [p["name"] for p in st["pods"]] == ["ps-scheduler", "ps-server-0", "ps-server-1", "ps-worker-0",
                                               "ps-worker-1"]
    port = json.loads((local_cluster / "namespaces" / "default" / "trainjobs" / "ps" / "runner.json").read_text())[
        "dmlc_port"]
    for pod, role in (("ps-scheduler", "scheduler"), ("ps-server-1", "server"), ("ps-worker-1", "worker")):
        log = traincli_log(capsys, "ps", pod)
        assert f"dmlc: {role} 127.0.0.1 {port}" in log


def traincli_log(capsys: pytest.CaptureFixture[str], job: str, pod: str) -> str:
    return connect(gpucluster.resolve()).pod_log(pod, "trainer")


def test_deadline_stops_a_job_that_runs_too_long(tmp_path: Path, local_cluster: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    use_file_dataspace(tmp_path, monkeypatch)
    manifest = tmp_path / "trainjob.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob", "metadata": {"name": "slow"},
        "spec": {"command": ["bash", "-c", "echo started; sleep 60"], "gpusPerWorker": 0,
                 "activeDeadlineSeconds": 2},
    }))
    assert cli(capsys, "submit", "-f", str(manifest))[0] == 0
    start = time.monotonic()
    pod_json = local_cluster / "namespaces" / "default" / "trainjobs" / "slow" / "pods" / "slow-worker-0" / "pod.json"
    wait_until(lambda: pod_json.exists() and "trainer" in json.loads(pod_json.read_text())["local"]["pids"], 30)
    pid = json.loads(pod_json.read_text())["local"]["pids"]["trainer"]
    assert cli(capsys, "wait", "slow", "--interval", "0.3", "--timeout", "60")[0] == 1
    assert time.monotonic() - start < 30
    st = status(capsys, "slow")
    assert st["reason"] == "DeadlineExceeded"
    assert st["message"] == "the job ran longer than activeDeadlineSeconds (2 s); its pods were stopped"
    wait_until(lambda: _gone(pid), 10)  # and they were: the `sleep 60` and its shell are gone
    assert "started" in cli(capsys, "logs", "slow")[1]


def test_a_killed_parameter_server_restarts_the_whole_gang_at_once(tmp_path: Path, local_cluster: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The workers would wait on a dead server until the wall time; the gang is replaced instead."""
    upload_toyset(use_file_dataspace(tmp_path, monkeypatch), tmp_path)
    monkeypatch.setenv("WAIT_FOR", str(tmp_path / "never"))
    assert cli(capsys, "submit", "-f", str(make_job(tmp_path, "psdie", workers=2, gpus=0)))[0] == 0
    pods = local_cluster / "namespaces" / "default" / "trainjobs" / "psdie" / "pods"
    wait_until(lambda: status(capsys, "psdie")["phase"] == "Running", 60)
    server = json.loads((pods / "psdie-server-0" / "pod.json").read_text())["local"]["pids"]["trainer"]
    worker = json.loads((pods / "psdie-worker-1" / "pod.json").read_text())["local"]["pids"]["trainer"]
    os.killpg(server, signal.SIGKILL)
    wait_until(lambda: status(capsys, "psdie")["restarts"] == 1, 20)
    st = job_file(local_cluster, "psdie")["status"]
    assert st["lastFailure"]["pod"] == "psdie-server-0" and st["lastFailure"]["exitCode"] == 137
    wait_until(lambda: _gone(worker), 20)  # the old gang's workers were stopped, not left waiting
    # ... and a new gang (attempt 1) runs in their place.
    wait_until(lambda: status(capsys, "psdie")["phase"] == "Running", 60)
    labels = json.loads((pods / "psdie-worker-1" / "pod.json").read_text())["metadata"]["labels"]
    assert labels["aidi.io/attempt"] == "1"
