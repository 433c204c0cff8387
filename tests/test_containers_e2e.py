"""`kubectl apply` → a trained model, with every pod step in a real container.

The chart installed on a real API server (the `platform` fixture), the operator from its image, the
stand-in kubelet (tests/support/podman_kubelet.py) running the pods the real scheduler binds to its node
with podman, the CPU job image training the example code package on packed sample data in the tests'
S3 dataspace. Run with `make e2e-containers` (AIDI_CONTAINER_TESTS=1); skipped elsewhere.
"""

from __future__ import annotations

import json
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
from aidi.dataspace.endpoint import DataspaceConfig
from aidi.jobs import codepkg
from aidi.pack import load_config as load_pack_config
from aidi.pack import pack_scene
from aidi.sample import SCENE_NAMES, generate
from tests.support import containers, e2e
from tests.support.podman_kubelet import PodmanKubelet

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not containers.ENABLED, reason=containers.SKIP_REASON)]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGE = REPO / "examples" / "auto_matrix_development_toolkit"
STEPS = ("with-bn", "fusion-bn-c1", "fusion-bn-c2", "int-inference")
BUCKET = "aidi"  # the chart's default dataspace.bucket


@pytest.fixture(scope="module")
def podman_nodes(e2e_run: str) -> Iterator[PodmanKubelet]:
    for image in (containers.JOB_IMAGE_CPU, containers.OPERATOR_IMAGE):
        containers.require_image(image)
    with PodmanKubelet(f"{e2e_run}-podman", count=1) as kubelet:
        yield kubelet


@pytest.fixture(scope="module")
def dataspace_config(platform: e2e.Platform) -> DataspaceConfig:
    access, secret = platform.s3_credentials
    return DataspaceConfig(endpoint=platform.s3_endpoint, bucket=BUCKET, access_key=access, secret_key=secret)


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
    spec["env"] = [{"name": "AIDI_CTX", "value": "cpu"}, {"name": "PIPELINE_TEST", "value": "1"},
                   {"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MXNET_CPU_WORKER_NTHREADS", "value": "1"}]
    return job


def test_kubectl_apply_trains_in_real_containers_survives_a_killed_worker_and_the_output_scores(
        platform: e2e.Platform, podman_nodes: PodmanKubelet, sample_rec: Path, dataspace_config: DataspaceConfig,
        tmp_path: Path) -> None:
    team = platform.teams[0]
    name = f"adasmini-4pe-{uuid.uuid4().hex[:5]}"
    password = uuid.uuid4().hex
    ds = open_dataspace(dataspace_config)
    try:
        ds.store.check(create=True)  # the chart's external dataspace: the bucket is the platform team's to make
        # What traincli submit does before it creates the TrainJob, and what the example's comment asks.
        ds.upload_dataset("adasmini_4pe", "trainset", sample_rec)
        package = codepkg.build(PACKAGE, password, tmp_path)
        key = package_key(team, name, package.sha256)
        ds.store.put_file(key, package.path, metadata={"sha256": package.sha256})
        code_uri = ds.store.uri(key)
    finally:
        ds.close()
    e2e.kubectl("-n", team, "create", "secret", "generic", f"{name}-code", f"--from-literal=password={password}")
    manifest = tmp_path / "trainjob.yaml"
    manifest.write_text(yaml.safe_dump(the_example_trainjob(team, name, code_uri, f"{name}-code",
                                                            podman_nodes.selector)))

    config = e2e.token_kubeconfig(tmp_path / "operator.kubeconfig",
                                  e2e.create_token(platform.operator_service_account, platform.namespace, 3600),
                                  platform.namespace)
    operator = containers.ContainerOperator(config, resync_seconds=1.0, log_dir=tmp_path)
    operator.extra_args = ("--job-image", containers.JOB_IMAGE_CPU, "--fetch-image", containers.OPERATOR_IMAGE,
                           "--dataspace-endpoint", platform.s3_endpoint, "--dataspace-bucket", BUCKET)
    pod = f"{name}-worker-0"
    try:
        with operator:
            e2e.kubectl("apply", "-f", str(manifest))

            # Kill the worker's trainer container once it trains: the operator restarts the gang.
            def training() -> str | None:
                name = podman_nodes.container(team, pod, "trainer")
                if name:
                    out = containers.podman("logs", name, timeout=60)
                    if "[with-bn] epoch" in out.stdout + out.stderr:
                        return name
                return None

            first = e2e.wait_for(training, timeout=600, interval=2, what="the trainer to start training")
            containers.podman("kill", first, timeout=60, check=True)

            def phase() -> str | None:
                got = e2e.kubectl("-n", team, "get", "trainjob", name, "-o", "jsonpath={.status.phase}").stdout
                return got if got in ("Succeeded", "Failed") else None

            try:
                final = e2e.wait_for(phase, timeout=900, interval=2, what=f"TrainJob {name} to finish")
            except AssertionError:
                final = "timeout"
            logs = {c: podman_nodes.logs(team, pod, c)
                    for c in ("fetch-code", "fetch-data", "trainer", "sync-output")}
            assert final == "Succeeded", (final, {c: text[-1500:] for c, text in logs.items()},
                                          operator.log()[-3000:], podman_nodes.errors)
        assert "4 steps done" in logs["trainer"]
        status = json.loads(e2e.kubectl("-n", team, "get", "trainjob", name, "-o", "json").stdout)["status"]
        assert status["restarts"] == 1 and status["lastFailure"]["exitCode"] == 137, status
        status = json.loads(e2e.kubectl("-n", team, "get", "pod", pod, "-o", "json").stdout)["status"]
        assert [c["name"] for c in status["initContainerStatuses"]] == ["fetch-code", "fetch-data"]
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
