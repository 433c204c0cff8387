"""The images as built (`make images`): the GPU job image carries every library MXNet's CUDA build links
against but the driver's, the CPU job image trains the 4 steps on packed sample data as a pod runs it
(non-root, read-only root filesystem, no network), and the operator image runs jobs on a real API server.

Run with `make e2e-containers` (AIDI_CONTAINER_TESTS=1); skipped elsewhere (tests/support/containers.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aidi_operator.kube import KubeApi

from tests.support import containers, e2e
from tests.support import operator_scenarios as scenarios
from tests.support.operator import ScheduledCluster
from tests.test_trainer import pack_small_workspace

pytestmark = pytest.mark.skipif(not containers.ENABLED, reason=containers.SKIP_REASON)

REPO = Path(__file__).resolve().parent.parent
SITE = "/opt/aidi/lib/python3.11/site-packages"
STEPS = ("with-bn", "fusion-bn-c1", "fusion-bn-c2", "int-inference")
# tests/test_trainer.py's small network and images, with the config path the container sees.
CONFIG = """
import runpy
tasks = runpy.run_path("/job/code/configs/4pe_resize/multitask.py")["tasks"]
input_size = (96, 64)
backbone = [(8, 2), (16, 2), (16, 2), (16, 1)]
head_channels = 16
batch_size = 4
workers = 1
log_interval = 2
calibration_batches = 2
steps = {"with-bn": {"epochs": 2, "lr": 5e-3}, "fusion-bn-c1": {"epochs": 1, "lr": 1e-3},
         "fusion-bn-c2": {"epochs": 1, "lr": 1e-3}}
"""


def test_the_gpu_job_image_resolves_every_library_of_libmxnet_but_the_driver_s() -> None:
    containers.require_image(containers.JOB_IMAGE)
    done = containers.podman("run", "--rm", *containers.runtime_args(), "--network", "none", "--entrypoint", "ldd",
                             containers.JOB_IMAGE, f"{SITE}/mxnet/libmxnet.so", check=True)
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+(?: \S+)?) \(0x", done.stdout, re.M))
    missing = set(re.findall(r"^\s*(\S+) => not found", done.stdout, re.M))
    assert missing == {"libcuda.so.1"}, done.stdout
    # The CUDA libraries come from NVIDIA's wheels, found through the image's ld.so.conf.d entry.
    for lib in ("libcudart.so.11.0", "libcublas.so.11", "libcublasLt.so.11", "libcurand.so.10",
                "libcufft.so.10", "libcusolver.so.11", "libcusparse.so.11", "libnvrtc.so.11.2"):
        if lib in resolved:
            assert resolved[lib].startswith(f"{SITE}/nvidia/"), (lib, resolved[lib])
    assert any(name.startswith("libcudart") for name in resolved), done.stdout
    # What the dynamic loader says at import: only the driver library is missing.
    imported = containers.podman("run", "--rm", *containers.runtime_args(), "--network", "none",
                                 containers.JOB_IMAGE, "python", "-c", "import mxnet")
    assert imported.returncode != 0
    assert "libcuda.so.1: cannot open shared object file" in imported.stderr, imported.stderr[-2000:]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small adas_mini packed with the real pack configs, a datasets.yaml and the small config."""
    root = tmp_path_factory.mktemp("packed")
    root.chmod(0o755)  # readable by the image's user, as a dataset volume is
    return pack_small_workspace(root, CONFIG)


def test_the_cpu_job_image_trains_the_4_steps_as_a_pod_runs_it(packed: Path, tmp_path: Path) -> None:
    containers.require_image(containers.JOB_IMAGE_CPU)
    output = tmp_path / "output"
    output.mkdir()
    output.chmod(0o777)  # an emptyDir: writable by the pod's user
    done = containers.podman(
        "run", "--rm", *containers.runtime_args(), "--network", "none", "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "all", "--security-opt", "no-new-privileges",
        "-e", "OMP_NUM_THREADS=1", "-e", "MXNET_CPU_WORKER_NTHREADS=1",
        "-v", f"{REPO / 'tools'}:/job/code/tools:ro", "-v", f"{REPO / 'configs'}:/job/code/configs:ro",
        "-v", f"{packed}:/data_space/input/sample:ro", "-v", f"{output}:/data_space/output",
        containers.JOB_IMAGE_CPU,
        "bash", "tools/quanti_training_2step_fusion_bn.sh", "--config", "/data_space/input/sample/ci.py",
        "--ctx", "cpu", "--pipeline-test", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 steps done" in done.stdout
    for step in STEPS:  # the default --output of a pod: /data_space/output
        assert (output / f"{step}-export-last-symbol.json").is_file(), step
        assert (output / f"{step}-export-last-0000.params").is_file(), step
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["steps"]) == set(STEPS)
    assert {p.stat().st_uid for p in output.iterdir()} == {1000}  # the image's user, not root


@pytest.mark.e2e
async def test_the_operator_image_runs_a_job_on_the_real_api_server(
        platform: e2e.Platform, e2e_nodes: e2e.Kubelet, tmp_path: Path) -> None:
    containers.require_image(containers.OPERATOR_IMAGE)
    team = platform.teams[0]
    config = e2e.token_kubeconfig(tmp_path / "operator.kubeconfig",
                                  e2e.create_token(platform.operator_service_account, platform.namespace, 600),
                                  platform.namespace)
    api = KubeApi(e2e.connection)
    cluster = ScheduledCluster(api, team, e2e_nodes.selector)
    try:
        with containers.ContainerOperator(config, resync_seconds=0.5, log_dir=tmp_path) as operator:
            await scenarios.single_worker_succeeds(cluster)
        assert not operator.forbidden(), "\n".join(operator.forbidden())
    finally:
        await cluster.delete_job("single")
        await api.close()
