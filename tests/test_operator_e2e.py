"""The operator on a real API server, as it is deployed: `aidi-operator` as its own process, outside the
cluster, with a token of the chart's own operator ServiceAccount (the chart installed for real by the
``platform`` fixture), so every scenario also proves that the chart's RBAC is enough — a refused request
fails the test. The real scheduler binds pods to this run's GPU nodes; the test plays their kubelet.

`make test` runs these against ../shared/k8s/control-plane; `make e2e` against your kubeconfig's cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aidi_operator.kube import ApiRefused, KubeApi, core_path

from tests.support import e2e
from tests.support import operator_scenarios as scenarios
from tests.support.operator import ScheduledCluster, eventually

pytestmark = pytest.mark.e2e
# Shorter than the deployed 30 s, for the scenario that gives no verdict; the real scheduler judges the other
# scenarios' pods within milliseconds.
FIRST_STATUS_WAIT = 3.0


@pytest.fixture()
def operator(platform: e2e.Platform, tmp_path: Path) -> Iterator[e2e.OperatorProcess]:
    """aidi-operator, cluster-wide, with the chart's operator ServiceAccount token."""
    with e2e.operator_with_token(platform, tmp_path,
                                 extra_args=("--first-status-wait", str(FIRST_STATUS_WAIT))) as running:
        yield running
    assert not running.forbidden(), "the chart's RBAC refused the operator:\n" + "\n".join(running.forbidden())


@pytest.fixture()
async def cluster(e2e_run: str, e2e_nodes: e2e.Kubelet,
                  operator: e2e.OperatorProcess) -> AsyncIterator[ScheduledCluster]:
    """A throwaway namespace whose jobs the real scheduler binds to this run's GPU nodes."""
    api = KubeApi(e2e.connection)
    namespace = f"aidi-e2e-{e2e_run}-{uuid.uuid4().hex[:6]}"
    await api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": namespace, "labels": {e2e.E2E_LABEL: e2e_run}}})
    try:
        yield ScheduledCluster(api, namespace, e2e_nodes.selector)
    finally:
        with contextlib.suppress(ApiRefused):
            await api.delete(f"/api/v1/namespaces/{namespace}")
        await api.close()


async def test_single_worker_succeeds(cluster) -> None:
    await scenarios.single_worker_succeeds(cluster)
    pod = (await cluster.pods("single"))["single-worker-0"]
    assert pod["spec"]["nodeName"].startswith("aidi-e2e-")  # bound by the real scheduler


async def test_a_job_too_big_for_any_node_is_pending_with_the_schedulers_reason(cluster) -> None:
    await scenarios.too_big_to_schedule(cluster)


async def test_first_status_waits_for_the_schedulers_verdict(cluster) -> None:
    await scenarios.first_status_waits_for_the_schedulers_verdict(cluster, wait=FIRST_STATUS_WAIT)


async def test_multi_worker_mxnet_env_and_service(cluster) -> None:
    await scenarios.multi_worker_mxnet(cluster)


async def test_gang_restart_up_to_backoff_limit(cluster) -> None:
    await scenarios.gang_restart(cluster)


async def test_deadline_exceeded(cluster) -> None:
    await scenarios.deadline(cluster)


async def test_suspend_and_resume(cluster) -> None:
    await scenarios.suspend_and_resume(cluster)


async def test_deletion_cascade(cluster) -> None:
    await scenarios.deletion_cascade(cluster)


async def test_deletion_cascade_through_the_garbage_collector(cluster, operator) -> None:
    await scenarios.garbage_collected(cluster, lambda: asyncio.to_thread(operator.stop))


async def test_ttl_after_finished(cluster) -> None:
    await scenarios.ttl_after_finished(cluster)


async def test_operator_restart_mid_job(cluster, operator) -> None:
    await scenarios.operator_restart(cluster, lambda: asyncio.to_thread(operator.restart))


async def test_a_stale_write_is_refused_and_loses_nothing(cluster, tmp_path: Path) -> None:
    """A client replacing the job from an old copy gets 409; the operator's status survives every write."""
    c = cluster
    await c.create_job("stale", backoffLimit=2, nodeSelector=c.node_selector)
    old = await c.job("stale")
    await c.wait_pods("stale", ["stale-worker-0"])
    await c.run_pod("stale-worker-0")
    running = await c.wait_phase("stale", "Running")
    assert (await c.job("stale"))["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]

    old["spec"]["backoffLimit"] = 5
    (tmp_path / "stale.json").write_text(json.dumps(old))
    refused = await asyncio.to_thread(e2e.kubectl, "replace", "-f", str(tmp_path / "stale.json"), check=False)
    assert refused.returncode != 0 and "the object has been modified" in refused.stderr, refused.stderr
    assert (await c.job("stale"))["spec"]["backoffLimit"] == 2

    fresh = await c.job("stale")
    fresh["spec"]["backoffLimit"] = 5
    (tmp_path / "fresh.json").write_text(json.dumps(fresh))
    await asyncio.to_thread(e2e.kubectl, "replace", "-f", str(tmp_path / "fresh.json"))
    status = await c.wait_phase("stale", "Running", observedGeneration=2)
    assert status["startTime"] == running["startTime"] and status["restarts"] == 0
    await c.finish_pod("stale-worker-0")
    await c.wait_phase("stale", "Succeeded")


def _status_of(name: str, state: dict, ready: bool = False) -> dict:
    return {"name": name, "image": "aidi/operator:0.1.0", "imageID": "", "ready": ready, "restartCount": 0,
            "state": state}


async def test_a_deleted_workers_replacement_restores_the_checkpoint_and_says_so(cluster) -> None:
    """Issue 17: the pod that replaces a deleted worker carries the restore step; the status names what it
    restored (the kubelet's part — the restore step's termination message — played by the test)."""
    c = cluster
    job = await c.create_job("ckpt", dataSpace={"output": {"name": "ckpt_models"}}, nodeSelector=c.node_selector)
    prefix = f"checkpoints/{c.ns}/ckpt/{job['metadata']['uid']}/"
    first = (await c.wait_pods("ckpt", ["ckpt-worker-0"]))["ckpt-worker-0"]
    init = {x["name"]: x for x in first["spec"]["initContainers"]}
    assert init["fetch-checkpoint"]["command"] == [
        "aidi", "fetch-checkpoint", "--prefix", prefix, "--dest", "/data_space/output",
        "--message-file", "/dev/termination-log"]
    sync = next(x for x in first["spec"]["containers"] if x["name"] == "sync-output")
    assert f"aidi sync-checkpoints --prefix {prefix} --src /data_space/output --attempt 0" in sync["command"][2]
    await c.run_pod("ckpt-worker-0")
    await c.wait_phase("ckpt", "Running")

    await c.api.delete(core_path(c.ns, "pods", "ckpt-worker-0"))  # preempted, evicted, or kubectl delete pod
    status = await eventually(lambda: _restarted(c, "ckpt", 1), timeout=20, what="restart 1")
    assert status["lastFailure"]["reason"] == "PodDeleted"
    replacement = (await c.wait_pods("ckpt", ["ckpt-worker-0"], attempt=1, timeout=20))["ckpt-worker-0"]
    assert replacement["metadata"]["uid"] != first["metadata"]["uid"]
    assert [x["name"] for x in replacement["spec"]["initContainers"]] == ["fetch-checkpoint"]
    assert next(x for x in replacement["spec"]["initContainers"])["command"] == init["fetch-checkpoint"]["command"]
    sync = next(x for x in replacement["spec"]["containers"] if x["name"] == "sync-output")
    assert "--attempt 1 " in sync["command"][2]

    await c.bound("ckpt-worker-0")
    restored = json.dumps({"checkpoint": 4, "attempt": 0, "summary": "step fusion-bn-c1 after epoch 3"})
    await c.set_pod_status("ckpt-worker-0", {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "initContainerStatuses": [_status_of("fetch-checkpoint", {"terminated": {
            "exitCode": 0, "reason": "Completed", "message": restored}})],
        "containerStatuses": [_status_of("trainer", {"running": {}}, True),
                              _status_of("sync-output", {"running": {}}, True)]})
    status = await c.wait_phase("ckpt", "Running", restarts=1, timeout=20)
    assert status["resumed"] == {"checkpoint": 4, "attempt": 0, "summary": "step fusion-bn-c1 after epoch 3",
                                 "message": "resumed step fusion-bn-c1 after epoch 3 from attempt 0's checkpoint"}
    assert status["message"] == ("1/1 worker running; resumed step fusion-bn-c1 after epoch 3 from attempt 0's "
                                 "checkpoint")


async def test_a_deleted_scheduler_restarts_the_whole_gang(cluster) -> None:
    """Workers joined to a scheduler that is gone would wait until the wall time; the gang is replaced."""
    c = cluster
    await c.create_job("psdel", workers={"min": 2, "max": 2}, parameterServers=1, nodeSelector=c.node_selector)
    names = ["psdel-scheduler", "psdel-server-0", "psdel-worker-0", "psdel-worker-1"]
    pods = await c.wait_pods("psdel", names)
    assert {t["key"]: t["tolerationSeconds"] for t in pods["psdel-worker-0"]["spec"]["tolerations"]
            if t["key"].startswith("node.kubernetes.io/")} == {"node.kubernetes.io/unreachable": 60,
                                                               "node.kubernetes.io/not-ready": 60}
    await c.run_all("psdel")
    await c.wait_phase("psdel", "Running")
    await c.api.delete(core_path(c.ns, "pods", "psdel-scheduler"))
    status = await eventually(lambda: _restarted(c, "psdel", 1), timeout=20, what="restart 1")
    assert status["lastFailure"]["pod"] == "psdel-scheduler" and status["lastFailure"]["reason"] == "PodDeleted"
    await c.wait_pods("psdel", names, attempt=1, timeout=20)


async def _restarted(c, job: str, restarts: int) -> dict | None:
    status = await c.status(job)
    return status if status.get("restarts") == restarts and status.get("lastFailure") else None
