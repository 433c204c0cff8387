"""`kubectl apply` → a trained model, with every pod step in a real container.

The chart installed on a real API server (the `platform` fixture), the operator from its image, the
stand-in kubelet (tests/support/podman_kubelet.py) running the pods the real scheduler binds to its node
with podman, the CPU job image training the example code package on packed sample data in the tests'
S3 dataspace. Run with `make e2e-containers` (AIDI_CONTAINER_TESTS=1); skipped elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidi.cluster.submit import package_key
from aidi.dataspace import open_dataspace
from aidi.dataspace.checkpoints import CheckpointStore, job_prefix
from aidi.dataspace.endpoint import DataspaceConfig
from aidi.jobs import codepkg
from aidi.pack import load_config as load_pack_config
from aidi.pack import pack_scene
from aidi.sample import SCENE_NAMES, generate
from tests.support import containers, e2e
from tests.support.podman_kubelet import PodmanKubelet
from tests.test_trainer import DIST_STEPS, logged_losses, pack_small_workspace, trained_digests

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not containers.ENABLED, reason=containers.SKIP_REASON)]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGE = REPO / "examples" / "auto_matrix_development_toolkit"
STEPS = ("with-bn", "fusion-bn-c1", "fusion-bn-c2", "int-inference")
BUCKET = "aidi"  # the chart's default dataspace.bucket
# tests/test_trainer.py's small network on the real config's branches, as the code package sees it.
SMALL_CONFIG = """
import os, runpy
_configs = os.environ["WORKING_PATH"] + "/scripts/auto_matrix_algo/configs"
tasks = runpy.run_path(_configs + "/4pe_resize/multitask.py")["tasks"]
input_size = (96, 64)
backbone = [(8, 2), (16, 2), (16, 2), (16, 1)]
head_channels = 16
batch_size = 4
workers = 1
log_interval = 1
calibration_batches = 2
"""


@pytest.fixture(scope="module")
def podman_nodes(e2e_run: str) -> Iterator[PodmanKubelet]:
    for image in (containers.JOB_IMAGE_CPU, containers.OPERATOR_IMAGE):
        containers.require_image(image)
    with PodmanKubelet(f"{e2e_run}-podman", count=1) as kubelet:
        yield kubelet


@pytest.fixture(scope="module")
def dataspace_config(platform: e2e.Platform) -> DataspaceConfig:
    """The first team's own dataspace account, as its members' `hitc init` holds it: the job's pods reach only
    that bucket (their namespace's Secret), so the code package and datasets go there."""
    account = platform.team_accounts[0]
    return DataspaceConfig(endpoint=platform.s3_endpoint, bucket=account.bucket, access_key=account.access_key,
                           secret_key=account.secret_key)


@pytest.fixture(scope="module")
def sample_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample as `make demo` makes it (200 images a scene), packed as tools/pipeline.sh packs it:
    data/rec/<scene>/. Fewer images train a model that finds nothing in pipeline-test mode."""
    root = tmp_path_factory.mktemp("sample")
    generate(root / "adas_mini", images=200, seed=0)
    for scene in SCENE_NAMES:
        pack_scene(load_pack_config(REPO / "configs" / f"4pe_{scene}" / "train.py",
                                    source=str(root / "adas_mini" / scene), output=str(root / "rec" / scene)), jobs=1)
    return root / "rec"


def the_example_trainjob(namespace: str, name: str, code_uri: str, secret: str,
                         nodes: dict[str, str]) -> dict[str, Any]:
    """examples/trainjob.yaml, adapted in names only, plus what a CPU node needs (the CPU image, --ctx cpu)."""
    job = yaml.safe_load((REPO / "examples" / "trainjob.yaml").read_text())
    job["metadata"].update(name=name, namespace=namespace)
    spec = job["spec"]
    spec["image"] = containers.JOB_IMAGE_CPU
    spec["codePackage"] = {"uri": code_uri, "passwordSecretRef": {"name": secret, "key": "password"}}
    spec["nodeSelector"] = nodes
    spec["activeDeadlineSeconds"] = 1200
    spec["checkpoints"] = {"intervalSeconds": 0}  # every epoch's checkpoint is copied: the kill below finds one
    spec["env"] = [{"name": "AIDI_CTX", "value": "cpu"}, {"name": "PIPELINE_TEST", "value": "1"},
                   {"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MXNET_CPU_WORKER_NTHREADS", "value": "1"}]
    return job


def upload_code(config: DataspaceConfig, team: str, name: str, folder: Path, tmp_path: Path,
                datasets: dict[str, Path]) -> tuple[str, str]:
    """What traincli submit does before it creates the TrainJob, and what the example's comment asks: the
    datasets and the encrypted code package in the dataspace, the password in a Secret. (uri, Secret name)"""
    password = uuid.uuid4().hex
    ds = open_dataspace(config)
    try:
        ds.store.check()
        for dataset, files in datasets.items():
            ds.upload_dataset(dataset, "trainset", files)
        package = codepkg.build(folder, password, tmp_path)
        key = package_key(team, name, package.sha256)
        ds.store.put_file(key, package.path, metadata={"sha256": package.sha256})
        code_uri = ds.store.uri(key)
    finally:
        ds.close()
    e2e.kubectl("-n", team, "create", "secret", "generic", f"{name}-code", f"--from-literal=password={password}")
    return code_uri, f"{name}-code"


def job_operator(platform: e2e.Platform, tmp_path: Path) -> containers.ContainerOperator:
    """The operator from its image with the chart's operator token, making pods of the CPU image."""
    config = e2e.token_kubeconfig(tmp_path / "operator.kubeconfig",
                                  e2e.create_token(platform.operator_service_account, platform.namespace, 3600),
                                  platform.namespace)
    operator = containers.ContainerOperator(config, resync_seconds=1.0, log_dir=tmp_path)
    operator.extra_args = ("--job-image", containers.JOB_IMAGE_CPU, "--fetch-image", containers.OPERATOR_IMAGE,
                           "--dataspace-endpoint", platform.s3_endpoint, "--dataspace-bucket", BUCKET)
    return operator


def final_phase(team: str, name: str, timeout: float) -> str:
    def phase() -> str | None:
        got = e2e.kubectl("-n", team, "get", "trainjob", name, "-o", "jsonpath={.status.phase}").stdout
        return got if got in ("Succeeded", "Failed") else None

    try:
        return e2e.wait_for(phase, timeout=timeout, interval=2, what=f"TrainJob {name} to finish")
    except AssertionError:
        return "timeout"


def test_kubectl_apply_trains_in_real_containers_survives_a_killed_worker_and_the_output_scores(
        platform: e2e.Platform, podman_nodes: PodmanKubelet, sample_rec: Path, dataspace_config: DataspaceConfig,
        tmp_path: Path) -> None:
    team = platform.teams[0]
    name = f"adasmini-4pe-{uuid.uuid4().hex[:5]}"
    code_uri, secret = upload_code(dataspace_config, team, name, PACKAGE, tmp_path, {"adasmini_4pe": sample_rec})
    manifest = tmp_path / "trainjob.yaml"
    manifest.write_text(yaml.safe_dump(the_example_trainjob(team, name, code_uri, secret, podman_nodes.selector)))
    operator = job_operator(platform, tmp_path)
    pod = f"{name}-worker-0"
    try:
        with operator:
            e2e.kubectl("apply", "-f", str(manifest))

            # Kill the worker's trainer container once a checkpoint of step 0 is in the dataspace: the operator
            # restarts the gang, whose new pod restores that checkpoint (fetch-checkpoint) and resumes.
            uid = e2e.kubectl("-n", team, "get", "trainjob", name, "-o", "jsonpath={.metadata.uid}").stdout
            ds = open_dataspace(dataspace_config)
            checkpoints = CheckpointStore(ds.store, job_prefix(team, name, uid))

            def checkpointed() -> str | None:  # one with an epoch of step 0 (the first holds only the job record)
                container = podman_nodes.container(team, pod, "trainer")
                latest = checkpoints.latest() if container else None
                return container if latest and latest.progress.get("with-bn", 0) >= 1 else None

            try:
                first = e2e.wait_for(checkpointed, timeout=600, interval=2, what="a checkpoint of step 0")
                containers.podman("kill", first, timeout=60, check=True)
            finally:
                ds.close()
            killed_log = containers.podman("logs", first, timeout=60)
            assert "[with-bn] exported" not in killed_log.stdout + killed_log.stderr, \
                "step 0 ended before the kill: the resume would skip it rather than continue it"

            final = final_phase(team, name, timeout=900)
            logs = {c: podman_nodes.logs(team, pod, c)
                    for c in ("fetch-code", "fetch-data", "fetch-checkpoint", "trainer", "sync-output")}
            assert final == "Succeeded", (final, {c: text[-1500:] for c, text in logs.items()},
                                          operator.log()[-3000:], podman_nodes.errors)
        assert "4 steps done" in logs["trainer"]
        status = json.loads(e2e.kubectl("-n", team, "get", "trainjob", name, "-o", "json").stdout)["status"]
        assert status["restarts"] == 1 and status["lastFailure"]["exitCode"] == 137, status
        # The replacement pod restored the killed attempt's checkpoint and the trainer continued from it.
        resumed = status["resumed"]
        assert re.fullmatch(r"resumed step with-bn after epoch \d+ from attempt 0's checkpoint",
                            resumed["message"]), resumed
        epoch = int(resumed["summary"].rsplit(" ", 1)[1])
        assert f"[with-bn] resuming after epoch {epoch}/" in logs["trainer"], logs["trainer"][-3000:]
        assert "restored checkpoint" in logs["fetch-checkpoint"].lower(), logs["fetch-checkpoint"]
        status = json.loads(e2e.kubectl("-n", team, "get", "pod", pod, "-o", "json").stdout)["status"]
        assert [c["name"] for c in status["initContainerStatuses"]] == ["fetch-code", "fetch-data",
                                                                        "fetch-checkpoint"]
        assert json.loads(status["initContainerStatuses"][2]["state"]["terminated"]["message"])["attempt"] == 0
        for c in status["initContainerStatuses"] + status["containerStatuses"]:
            assert c["state"]["terminated"]["exitCode"] == 0, c
            assert c["state"]["terminated"]["reason"] == "Completed", c

        # The output version holds the 4 steps' models; they score on the sample's validation set.
        ds = open_dataspace(dataspace_config)
        try:
            ds.download_dataset("adasmini_4pe_models", "dataset", dest=tmp_path / "output")
        finally:
            ds.close()
        output = next(p.parent for p in (tmp_path / "output").rglob("metrics.json"))
        for step in STEPS:
            assert (output / f"{step}-export-last-symbol.json").is_file(), step
            assert (output / f"{step}-export-last-0000.params").is_file(), step
        scene = "vehicle"
        rec = sample_rec / scene / "val.rec"
        run([str(BIN / "aidi"), "predict", "--model", str(output / "fusion-bn-c2-export-last"), "--rec", str(rec),
             "--out", str(tmp_path / "pr.json"), "--config", str(REPO / "configs" / "4pe_resize" / "multitask.py")])
        run([str(BIN / "aidi"), "eval", "--gt", str(rec), "--pr", str(tmp_path / "pr.json"),
             "--out", str(tmp_path / "eval"), "--no-report"])
        results = json.loads((tmp_path / "eval" / "results.json").read_text())
        # A pipeline-test run is reproducible (same threads, same data): the model finds vehicles.
        assert results["task"] == "detection" and results["summary"]["tp"] > 0, results["summary"]
        assert results["summary"]["map_voc11"] > 0.1, results["summary"]
    finally:
        e2e.kubectl("-n", team, "delete", "trainjob", name, "--ignore-not-found", "--wait=false", check=False)
        e2e.kubectl("-n", team, "delete", "secret", f"{name}-code", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/test_trainer.py's small adas_mini (40 images of 96x64 a scene), packed, with its datasets.yaml."""
    return pack_small_workspace(tmp_path_factory.mktemp("small"), "")


def test_a_two_worker_parameter_server_job_combines_the_workers_gradients_in_real_containers(
        platform: e2e.Platform, podman_nodes: PodmanKubelet, small_workspace: Path,
        dataspace_config: DataspaceConfig, tmp_path: Path) -> None:
    """Scheduler, server and 2 workers, each pod in its own containers, find each other by the names the
    headless Service gives (the stand-in kubelet's hosts entries). The workers train on different shards
    (their logged losses differ) and still end every step bit-identical: only combined gradients do that.
    A worker training alone (a `local` kvstore) sees the whole data as rank 0 of 1, like the other worker:
    same losses, and the check fails."""
    team = platform.teams[0]
    name = f"ps-{uuid.uuid4().hex[:5]}"
    dataset = "adasmini_small"
    code = tmp_path / "code"
    shutil.copytree(PACKAGE, code)
    configs = code / "scripts" / "auto_matrix_algo" / "configs"
    (configs / "ci").mkdir()
    (configs / "ci" / "ci.py").write_text(SMALL_CONFIG + DIST_STEPS)
    datasets = yaml.safe_load((small_workspace / "datasets.yaml").read_text())
    datasets["root"] = f"/data_space/input/{dataset}/trainset/latest"
    (configs / "ci" / "datasets.yaml").write_text(yaml.safe_dump(datasets))
    code_uri, secret = upload_code(dataspace_config, team, name, code, tmp_path, {dataset: small_workspace / "rec"})

    job = the_example_trainjob(team, name, code_uri, secret, podman_nodes.selector)
    ci = "${WORKING_PATH}/scripts/auto_matrix_algo/configs/ci"
    job["spec"].update(workers={"min": 2, "max": 2}, parameterServers=1, gpusPerWorker=1,
                       command=["bash", "-c",
                                f"${{WORKING_PATH}}/run.sh --config {ci}/ci.py --datasets {ci}/datasets.yaml"],
                       dataSpace={"inputs": [{"name": dataset, "type": "trainset", "version": "latest"}],
                                  "output": {"name": "adasmini_ps_models"}})
    manifest = tmp_path / "trainjob.yaml"
    manifest.write_text(yaml.safe_dump(job))
    workers = [f"{name}-worker-{i}" for i in range(2)]
    pods = [f"{name}-scheduler", f"{name}-server-0", *workers]
    operator = job_operator(platform, tmp_path)
    try:
        with operator:
            e2e.kubectl("apply", "-f", str(manifest))

            def workers_done() -> list[str] | None:
                phases = [e2e.kubectl("-n", team, "get", "pod", w, "-o", "jsonpath={.status.phase}",
                                      check=False).stdout for w in workers]
                return phases if all(ph in ("Succeeded", "Failed") for ph in phases) else None

            try:
                e2e.wait_for(workers_done, timeout=600, interval=2, what="both workers to finish")
            finally:
                logs = {(pod, c): podman_nodes.logs(team, pod, c) for pod in pods for c in ("fetch-code", "trainer")}
            tails = {f"{pod}/{c}": text[-1500:] for (pod, c), text in logs.items()}
            first, second = (logs[w, "trainer"] for w in workers)
            # Each worker trained on its own shard: its losses are its own batches'.
            assert logged_losses(first) and logged_losses(second), tails
            assert logged_losses(first) != logged_losses(second), (logged_losses(first), tails)
            # ... and yet both hold the same parameters after every trained step, bit for bit.
            digests = trained_digests(first)
            assert list(digests) == list(STEPS[:3]), tails
            assert digests == trained_digests(second), (digests, trained_digests(second))
            for w in workers:
                assert re.search(r"trained parameters sha256 \w+ \(worker [01] of 2\)", logs[w, "trainer"])

            final = final_phase(team, name, timeout=300)
            assert final == "Succeeded", (final, tails, operator.log()[-3000:], podman_nodes.errors)
        for pod in pods:  # every role ran in its own pod's containers and ended well
            got = json.loads(e2e.kubectl("-n", team, "get", "pod", pod, "-o", "json").stdout)["status"]
            assert [c["state"]["terminated"]["exitCode"] for c in got["containerStatuses"]] == \
                [0] * len(got["containerStatuses"]), (pod, got["containerStatuses"])
        ds = open_dataspace(dataspace_config)
        try:
            ds.download_dataset("adasmini_ps_models", "dataset", dest=tmp_path / "output")
        finally:
            ds.close()
        metrics = json.loads(next((tmp_path / "output").rglob("metrics.json")).read_text())
        assert metrics["workers"] == 2, metrics
        assert metrics["steps"]["with-bn"]["train"]["iterations"] == 2, metrics["steps"]["with-bn"]
    finally:
        e2e.kubectl("-n", team, "delete", "trainjob", name, "--ignore-not-found", "--wait=false", check=False)
        e2e.kubectl("-n", team, "delete", "secret", f"{name}-code", "--ignore-not-found", check=False)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (command, done.stderr[-2000:])
    return done


def test_the_stand_in_kubelet_runs_a_pod_as_its_spec_says(podman_nodes: PodmanKubelet, e2e_run: str) -> None:
    ns = f"aidi-e2e-{e2e_run}-kubelet"
    e2e.kubectl("create", "namespace", ns)
    e2e.kubectl("label", "namespace", ns, f"{e2e.E2E_LABEL}={e2e_run}")
    try:
        e2e.kubectl("-n", ns, "create", "secret", "generic", "s", "--from-literal=key=sekrit")
        image = containers.OPERATOR_IMAGE
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns}, "spec": {
            "nodeSelector": podman_nodes.selector, "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": 1234, "runAsGroup": 1234, "fsGroup": 2000},
            "volumes": [{"name": "shared", "emptyDir": {}}, {"name": "secret", "secret": {"secretName": "s"}}],
            "initContainers": [{
                "name": "first", "image": image, "command": ["sh", "-c"],
                "args": ["id -u > /shared/uid && echo $(GREETING) > /shared/greeting"],
                "env": [{"name": "GREETING", "value": "hello"}],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
            "containers": [
                {"name": "main", "image": image, "command": ["sh", "-c"],
                 "args": ["cat /shared/uid /shared/greeting /secret/key; echo; echo $POD $KEY; "
                          "touch /tmp/x 2>/dev/null && echo WRITABLE || echo READONLY"],
                 "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "key"}}}],
                 "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                  {"name": "secret", "mountPath": "/secret", "readOnly": True}]},
                {"name": "hog", "image": image, "command": ["python3", "-c", "x = bytearray(400 * 2**20)"],
                 "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
            ]}}
        e2e.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))

        def finished() -> dict[str, Any] | None:
            got = json.loads(e2e.kubectl("-n", ns, "get", "pod", "p", "-o", "json").stdout)["status"]
            return got if got.get("phase") in ("Succeeded", "Failed") else None

        status = e2e.wait_for(finished, timeout=180, interval=1, what="the pod to finish")
        assert status["phase"] == "Failed"  # the hog
        states = {c["name"]: c["state"]["terminated"] for c in status["initContainerStatuses"]
                  + status["containerStatuses"]}
        assert states["first"]["exitCode"] == 0 and states["main"]["reason"] == "Completed"
        assert states["hog"]["reason"] == "OOMKilled" and states["hog"]["exitCode"] == 137, states["hog"]
        assert podman_nodes.logs(ns, "p", "main").split() == ["1234", "hello", "sekrit", "p", "sekrit", "READONLY"]
        uid = json.loads(e2e.kubectl("-n", ns, "get", "pod", "p", "-o", "json").stdout)["metadata"]["uid"]
        assert containers.podman("ps", "-aq", "--filter", f"label=aidi.io/pod-uid={uid}").stdout.split()

        # A finished pod goes at once (no grace period); the kubelet then removes its containers.
        e2e.kubectl("-n", ns, "delete", "pod", "p", "--wait=true", "--timeout=60s")
        left = ("ps", "-aq", "--filter", f"label=aidi.io/pod-uid={uid}")
        e2e.wait_for(lambda: not containers.podman(*left).stdout.split(), timeout=60,
                     what="the deleted pod's containers to be removed")
    finally:
        e2e.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
