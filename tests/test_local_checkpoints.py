"""A gang restarted after its trainer was killed resumes from the checkpoint worker 0 copied to the dataspace:
the real trainer (pipeline-test sizes, the tiny packed adas_mini of tests/test_trainer.py) in a `local` cluster
job, SIGKILLed in the middle of step 1; it must end with the parameters of a run that never stopped, bit for bit.
The same kill with checkpoint sync turned off starts again from step 0 — so the first test can fail."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidi.dataspace import DataspaceConfig, open_dataspace, open_store
from tests.test_local import cli, job_file, local_cluster, status, wait_until  # noqa: F401 (local_cluster: a fixture)
from tests.test_podsteps import use_s3_dataspace
from tests.test_trainer import REPO, train, workspace  # noqa: F401 (workspace: a fixture)

PASSWORD = "ckpt-test-pw-51c2"
# Step 1 runs long enough (4 epochs) to be killed in its middle; the rest as short as the trainer allows.
STEPS = """
steps = {"with-bn": {"epochs": 2, "lr": 5e-3, "max_iters": 2},
         "fusion-bn-c1": {"epochs": 4, "lr": 1e-3, "max_iters": 3},
         "fusion-bn-c2": {"epochs": 1, "lr": 1e-3, "max_iters": 1}}
"""
COMPARED = ("with-bn-last-0000.params", "fusion-bn-c1-last-0000.params", "fusion-bn-c2-export-last-0000.params",
            "int-inference-export-last-0000.params")


def _config(workspace: Path) -> str:  # noqa: F811
    return (workspace / "ci.py").read_text() + STEPS


@pytest.fixture(scope="module")
def reference(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The run that never stopped, outside any cluster."""
    root = tmp_path_factory.mktemp("reference")
    (root / "ci.py").write_text(_config(workspace))
    done = train(root / "ci.py", root / "out", "--datasets", str(workspace / "datasets.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


def _submit(tmp_path: Path, workspace: Path, name: str, sync: bool,  # noqa: F811
            capsys: pytest.CaptureFixture[str], workers: int = 1) -> None:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / "ci.py").write_text(_config(workspace))
    datasets = yaml.safe_load((workspace / "datasets.yaml").read_text())
    datasets["root"] = "/data_space/input/adasci/trainset/latest"  # the pod's path: the runner maps it
    (code / "datasets.yaml").write_text(yaml.safe_dump(datasets))
    (code / "run.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f'exec bash {REPO}/tools/quanti_training_2step_fusion_bn.sh --config "$WORKING_PATH/ci.py" '
        '--datasets "$WORKING_PATH/datasets.yaml" --ctx cpu --pipeline-test\n')
    (code / "run.sh").chmod(0o755)
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump({
        "REQUIRED": {"JOB_NAME": name, "JOB_PASSWD": PASSWORD, "UPLOAD_DIR": f"./code-{name}", "PROJECT_ID": "P1",
                     "WORKER_MIN_NUM": workers, "WORKER_MAX_NUM": workers, "GPU_PER_WORKER": 0,
                     "RUN_SCRIPTS": "${WORKING_PATH}/run.sh"},
        "OPTIONAL": {"DATA_SPACE": {"DATA_TYPE": "trainset", "INPUT": "adasci", "OUTPUT": f"{name}_models"},
                     "CHECKPOINT_SYNC": sync, "CHECKPOINT_MINUTES": 0},
    }))
    assert cli(capsys, "submit", "-f", str(job))[0] == 0


def _pod_dir(cluster: Path, job: str, pod: str | None = None) -> Path:
    return cluster / "namespaces" / "default" / "trainjobs" / job / "pods" / (pod or f"{job}-worker-0")


def _trainer_processes(pgid: int) -> list[int]:
    """The trainer's Python processes in the trainer container's process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and b"aidi_trainer" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _kill_in_step_1(cluster: Path, job: str, pod_name: str | None = None) -> None:
    """SIGKILL the trainer once step 1 has saved an epoch (and so is in the middle of its 4)."""
    pod = _pod_dir(cluster, job, pod_name)
    progress = pod / "fs" / "data_space" / "output" / "fusion-bn-c1-progress.json"
    deadline = time.monotonic() + 240
    while not progress.exists():
        assert time.monotonic() < deadline, "step 1 never saved an epoch"
        time.sleep(0.05)
    pgid = json.loads((pod / "pod.json").read_text())["local"]["pids"]["trainer"]
    pids = _trainer_processes(pgid)
    assert pids, "the trainer process is gone already"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert not (pod / "fs" / "data_space" / "output" / "fusion-bn-c1-last-0000.params").exists(), \
        "step 1 finished before the kill: give it more epochs"


def _trainer_log(cluster: Path, job: str) -> str:
    path = _pod_dir(cluster, job) / "logs" / "trainer.log"
    return path.read_text() if path.exists() else ""


def test_a_killed_trainer_resumes_from_the_synced_checkpoint_bit_identical(
        tmp_path: Path, local_cluster: Path, workspace: Path, reference: Path, s3_server: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path, workspace, s3_server, monkeypatch)
    _submit(tmp_path, workspace, "resume", sync=True, capsys=capsys)
    _kill_in_step_1(local_cluster, "resume")
    code, out, err = cli(capsys, "wait", "resume", "--interval", "0.5", "--timeout", "400")
    assert code == 0, (out, err, status(capsys, "resume"))

    st = status(capsys, "resume")
    assert st["restarts"] == 1 and st["last_failure"]["exitCode"] == 137
    resumed = job_file(local_cluster, "resume")["status"]["resumed"]
    assert re.fullmatch(r"resumed step fusion-bn-c1 after epoch [123] from attempt 0's checkpoint",
                        resumed["message"]), resumed
    epoch = int(resumed["summary"].rsplit(" ", 1)[1])
    log = _trainer_log(local_cluster, "resume")
    assert "[with-bn] already done" in log and f"[fusion-bn-c1] resuming after epoch {epoch}/4" in log
    assert cli(capsys, "status", "resume")[1].count("resumed:    " + resumed["message"]) == 1

    ds = open_dataspace(config)
    try:
        got = tmp_path / "got"
        ds.download_dataset("resume_models", "dataset", "latest", got)
        for name in COMPARED:
            assert (got / name).read_bytes() == (reference / name).read_bytes(), name
        # A succeeded job's output version is final: its checkpoints are gone.
        assert list(ds.store.list("checkpoints/default/resume/")) == []
    finally:
        ds.close()


def test_without_checkpoint_sync_the_same_kill_restarts_from_zero(
        tmp_path: Path, local_cluster: Path, workspace: Path, s3_server: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path, workspace, s3_server, monkeypatch)
    _submit(tmp_path, workspace, "fresh", sync=False, capsys=capsys)
    _kill_in_step_1(local_cluster, "fresh")
    # The new gang's trainer trains step 0 again.
    wait_until(lambda: status(capsys, "fresh")["restarts"] == 1 and "[with-bn] step 0" in
               _trainer_log(local_cluster, "fresh"), 120)
    log = _trainer_log(local_cluster, "fresh")
    assert "already done" not in log and "resuming" not in log
    assert "resumed" not in job_file(local_cluster, "fresh")["status"]
    store = open_store(config)
    try:
        assert list(store.list("checkpoints/")) == []
    finally:
        store.close()
    assert cli(capsys, "delete", "fresh")[0] == 0


def _setup(tmp_path: Path, workspace: Path, s3_server: Any,  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    config = use_s3_dataspace(s3_server, monkeypatch)
    # Two cores shared with the rest of the suite: keep MXNet's and OpenMP's pools small.
    for var, value in {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "PYTHONUNBUFFERED": "1"}.items():
        monkeypatch.setenv(var, value)
    ds = open_dataspace(config)
    try:
        ds.upload_dataset("adasci", "trainset", workspace / "rec")
    finally:
        ds.close()
    return config


def test_a_two_worker_job_resumes_from_the_chiefs_checkpoint_whichever_pod_it_is(
        tmp_path: Path, local_cluster: Path, workspace: Path, s3_server: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Parameter-server training: ps-lite's rank 0 may be worker 1's pod; its checkpoints are the ones copied,
    every worker restores them after the chief is killed, and one output version is made."""
    config = _setup(tmp_path, workspace, s3_server, monkeypatch)
    _submit(tmp_path, workspace, "dist", sync=True, capsys=capsys, workers=2)
    pods = local_cluster / "namespaces" / "default" / "trainjobs" / "dist" / "pods"

    def ranks() -> dict[str, str]:
        found = {}
        for i in (0, 1):
            rank = pods / f"dist-worker-{i}" / "fs" / "var" / "run" / "aidi" / "done" / "rank"
            if rank.exists():
                found[f"dist-worker-{i}"] = rank.read_text().strip()
        return found

    wait_until(lambda: len(ranks()) == 2, 240)
    chief = next(pod for pod, rank in ranks().items() if rank == "0")
    assert sorted(ranks().values()) == ["0", "1"]
    _kill_in_step_1(local_cluster, "dist", chief)
    code, out, err = cli(capsys, "wait", "dist", "--interval", "0.5", "--timeout", "600")
    assert code == 0, (out, err, status(capsys, "dist"))
    resumed = job_file(local_cluster, "dist")["status"]["resumed"]
    assert re.fullmatch(r"resumed step fusion-bn-c1 after epoch [123] from attempt 0's checkpoint",
                        resumed["message"]), resumed
    # The new gang's chief (whichever pod) resumed from it.
    chief = next(pod for pod, rank in ranks().items() if rank == "0")
    log = (pods / chief / "logs" / "trainer.log").read_text()
    assert "[with-bn] already done" in log and "[fusion-bn-c1] resuming after epoch" in log
    other = next(pod for pod in ranks() if pod != chief)
    assert "the chief's pod (rank 0) syncs the outputs" in (pods / other / "logs" / "sync-output.log").read_text()
    ds = open_dataspace(config)
    try:
        [version] = ds.versions("dist_models", "dataset")
        names = {f.path for f in ds.resolve("dist_models", "dataset", version).files}
        assert {"int-inference-export-last-0000.params", "fusion-bn-c1-last-0000.params"} <= names
        assert list(ds.store.list("checkpoints/default/dist/")) == []
    finally:
        ds.close()
