"""The operator's scenarios, written once against ``Cluster`` and run twice: on kmock
(tests/test_operator.py) and on the kubeconfig's cluster (tests/test_operator_e2e.py).

Each scenario runs with the operator already started and plays the kubelet through pod status patches.
Pods select ``c.node_selector``: on kmock a label no node has; on the real API server this run's nodes,
which the real scheduler binds them to (``ScheduledCluster``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aidi_operator import netpol
from aidi_operator.kube import core_path

from aidi.jobs import podspec
from tests.support.operator import Cluster, eventually


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    main = next(c for c in pod["spec"]["containers"] if c["name"] == podspec.MAIN_CONTAINER)
    return {e["name"]: e.get("value", "") for e in main["env"]}


async def single_worker_succeeds(c: Cluster) -> None:
    job = await c.create_job("single", gpusPerWorker=4, priority=5, nodeSelector=c.node_selector)
    pods = await c.wait_pods("single", ["single-worker-0"])
    pod = pods["single-worker-0"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert pod["metadata"]["labels"][podspec.LABEL_ROLE] == "worker"
    assert pod["spec"]["priorityClassName"] == "aidi-priority-5"
    assert pod["spec"]["containers"][0]["resources"]["limits"][podspec.GPU_RESOURCE] == "4"
    status = await c.wait_phase("single", "Pending")
    assert status["workers"]["pending"] == 1

    if c.plays_scheduler:  # a real scheduler binds it (too_big_to_schedule shows its verdict)
        await c.unschedulable("single-worker-0", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
        status = await c.wait_phase("single", "Pending", reason="Unschedulable")
        assert status["message"] == ("worker-0 cannot be scheduled: 0/3 nodes are available: "
                                     "3 Insufficient nvidia.com/gpu.")

    await c.run_pod("single-worker-0")
    status = await c.wait_phase("single", "Running")
    assert status["message"] == "1/1 worker running"
    running = next(x for x in status["conditions"] if x["type"] == "Running")
    assert running["status"] == "True" and running["reason"] == "AllWorkersRunning"
    assert status["startTime"]

    await c.finish_pod("single-worker-0")
    status = await c.wait_phase("single", "Succeeded")
    assert status["workers"] == {"pending": 0, "active": 0, "succeeded": 1, "failed": 0}
    assert status["completionTime"] and status["restarts"] == 0
    # cleanPodPolicy Running (the default) keeps a finished pod, and its logs.
    await asyncio.sleep(0.5)
    assert set(await c.pods("single")) == {"single-worker-0"}


async def multi_worker_mxnet(c: Cluster) -> None:
    await c.create_job("ps", workers={"min": 2, "max": 2}, parameterServers=1, nodeSelector=c.node_selector)
    names = ["ps-scheduler", "ps-server-0", "ps-worker-0", "ps-worker-1"]
    pods = await c.wait_pods("ps", names)
    for name, role in zip(names, ["scheduler", "server", "worker", "worker"], strict=True):
        env = env_of(pods[name])
        assert env["DMLC_ROLE"] == role
        assert env["DMLC_PS_ROOT_URI"] == "ps-scheduler.ps"
        assert env["DMLC_PS_ROOT_PORT"] == str(podspec.DMLC_PORT)
        assert (env["DMLC_NUM_SERVER"], env["DMLC_NUM_WORKER"]) == ("1", "2")
        assert pods[name]["spec"]["subdomain"] == "ps" and pods[name]["spec"]["hostname"] == name
    assert env_of(pods["ps-worker-1"])["AIDI_WORKER_INDEX"] == "1"
    # No GPU for a server. (A real API server defaults `resources: {}`: ask for the GPU, not the key.)
    server_resources = pods["ps-server-0"]["spec"]["containers"][0].get("resources") or {}
    assert podspec.GPU_RESOURCE not in (server_resources.get("limits") or {})
    assert podspec.GPU_RESOURCE not in (server_resources.get("requests") or {})
    if c.plays_scheduler:  # no pod is placed yet: the Service and the job's own policy wait for the first one
        await asyncio.sleep(0.5)
        assert await c.api.get(core_path(c.ns, "services", "ps")) is None
        assert await c.api.get(netpol.path(c.ns, "ps")) is None
        await c.run_pod("ps-scheduler")
    service = await eventually(lambda: c.api.get(core_path(c.ns, "services", "ps")), what="the job's Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {podspec.LABEL_JOB: "ps"}
    assert service["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    await network_policies_close_the_pods(c, "ps", pods)

    await c.run_all("ps")
    status = await c.wait_phase("ps", "Running")
    assert status["workers"]["active"] == 2 and status["servers"]["active"] == 1
    await c.finish_pod("ps-worker-0")
    await c.finish_pod("ps-worker-1")
    await c.wait_phase("ps", "Succeeded")
    # The parameter servers never exit by themselves: cleanPodPolicy Running removes them.
    await eventually(lambda: _pod_names(c, "ps", {"ps-worker-0", "ps-worker-1"}), what="servers removed")


async def network_policies_close_the_pods(c: Cluster, job: str, pods: dict[str, dict[str, Any]]) -> None:
    """The namespace's isolation policy selects every pod of the job and lets nothing in; the job's own policy
    (owned by the job, made once a pod is placed) lets the job's pods in to each other, on TCP."""
    isolation = await c.api.get(netpol.path(c.ns, podspec.ISOLATION_POLICY))
    assert isolation is not None, "no isolation policy in the namespace"
    assert isolation["spec"]["policyTypes"] == ["Ingress"] and not isolation["spec"].get("ingress")
    assert "ownerReferences" not in isolation["metadata"]  # the namespace's, not a job's
    selector = isolation["spec"]["podSelector"]["matchLabels"]
    for name, pod in pods.items():
        assert selector.items() <= pod["metadata"]["labels"].items(), f"{name} is not covered by the isolation"
    own = await eventually(lambda: c.api.get(netpol.path(c.ns, job)), what="the job's own NetworkPolicy")
    assert own["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    job_pods = {"matchLabels": {podspec.LABEL_JOB: job}}
    assert own["spec"]["podSelector"] == job_pods
    assert own["spec"]["ingress"] == [{"from": [{"podSelector": job_pods}], "ports": [{"protocol": "TCP"}]}]


async def _pod_names(c: Cluster, job: str, expected: set[str]) -> bool:
    return set(await c.pods(job)) == expected


async def gang_restart(c: Cluster) -> None:
    await c.create_job("gang", workers={"min": 2, "max": 2}, parameterServers=1, backoffLimit=1,
                       nodeSelector=c.node_selector)
    names = ["gang-scheduler", "gang-server-0", "gang-worker-0", "gang-worker-1"]
    await c.wait_pods("gang", names)
    await c.run_all("gang")
    await c.wait_phase("gang", "Running")

    await c.finish_pod("gang-worker-1", 137, "OOMKilled")
    status = await eventually(lambda: _restarted(c, "gang", 1), what="restart 1")
    assert status["lastFailure"]["pod"] == "gang-worker-1"
    assert status["lastFailure"]["exitCode"] == 137
    assert status["lastFailure"]["message"] == "worker-1 ran out of memory (OOMKilled): exited with code 137"
    restarting = next(x for x in status["conditions"] if x["type"] == "Restarting")
    assert restarting["status"] == "True"
    # The whole gang is replaced, not just the failed worker.
    await c.wait_pods("gang", names, attempt=1)
    await c.run_all("gang")
    await c.wait_phase("gang", "Running", restarts=1)

    await c.finish_pod("gang-worker-0", 1)
    status = await c.wait_phase("gang", "Failed")
    assert status["reason"] == "BackoffLimitExceeded" and status["restarts"] == 1
    assert status["message"] == ("worker-0 exited with code 1; backoffLimit (1) reached after 1 restarts")
    # cleanPodPolicy Running: the still-running gang members are removed, the failed worker kept.
    await eventually(lambda: _pod_names(c, "gang", {"gang-worker-0"}), what="running pods removed")


async def _restarted(c: Cluster, job: str, restarts: int) -> dict[str, Any] | None:
    status = await c.status(job)
    return status if status.get("restarts") == restarts and status.get("lastFailure") else None


async def deadline(c: Cluster) -> None:
    await c.create_job("late", activeDeadlineSeconds=2, nodeSelector=c.node_selector)
    pods = await c.wait_pods("late", ["late-worker-0"])
    assert 1 <= pods["late-worker-0"]["spec"]["activeDeadlineSeconds"] <= 2
    await c.run_pod("late-worker-0")
    status = await c.wait_phase("late", "Failed", timeout=10)
    assert status["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (2 s)" in status["message"]
    await eventually(lambda: _pod_names(c, "late", set()), what="pods stopped")


async def suspend_and_resume(c: Cluster) -> None:
    await c.create_job("pause", nodeSelector=c.node_selector)
    await c.wait_pods("pause", ["pause-worker-0"])
    await c.run_pod("pause-worker-0")
    await c.wait_phase("pause", "Running")

    await c.patch_job("pause", {"suspend": True})
    status = await c.wait_phase("pause", "Suspended")
    await c.wait_pods("pause", [])
    assert next(x for x in status["conditions"] if x["type"] == "Suspended")["status"] == "True"

    await c.patch_job("pause", {"suspend": False})
    await c.wait_pods("pause", ["pause-worker-0"])
    status = await c.wait_phase("pause", "Pending")
    assert next(x for x in status["conditions"] if x["type"] == "Suspended")["status"] == "False"
    await c.run_pod("pause-worker-0")
    await c.wait_phase("pause", "Running")


async def deletion_cascade(c: Cluster) -> None:
    job = await c.create_job("gone", workers={"min": 2, "max": 2}, nodeSelector=c.node_selector)
    pods = await c.wait_pods("gone", ["gone-scheduler", "gone-server-0", "gone-server-1", "gone-worker-0",
                                      "gone-worker-1"])
    owners = {p["metadata"]["ownerReferences"][0]["uid"] for p in pods.values()}
    assert owners == {job["metadata"]["uid"]}
    assert not (await c.job("gone"))["metadata"].get("finalizers")  # deletion never waits for us
    await c.run_pod("gone-scheduler")  # placed: the job's Service is made
    await eventually(lambda: c.api.get(core_path(c.ns, "services", "gone")), what="the job's Service")
    await c.delete_job("gone")
    await eventually(lambda: _pod_names(c, "gone", set()), what="pods deleted with the job")
    await eventually(lambda: _absent(c, core_path(c.ns, "services", "gone")), what="service deleted")


async def _absent(c: Cluster, path: str) -> bool:
    return await c.api.get(path) is None


async def ttl_after_finished(c: Cluster) -> None:
    await c.create_job("short", ttlSecondsAfterFinished=1, cleanPodPolicy="None", nodeSelector=c.node_selector)
    await c.wait_pods("short", ["short-worker-0"])
    await c.finish_pod("short-worker-0")
    await c.wait_phase("short", "Succeeded")
    await eventually(lambda: _absent(c, f"{c.job_path('short')}"), timeout=10, what="job deleted by its TTL")
    await eventually(lambda: _absent(c, core_path(c.ns, "pods", "short-worker-0")), what="pod deleted with it")


async def operator_restart(c: Cluster, restart: Callable[[], Awaitable[None]]) -> None:
    """Stop the operator mid-job and start another: no pod made twice, no status lost."""
    await c.create_job("phoenix", backoffLimit=2, nodeSelector=c.node_selector)
    await c.wait_pods("phoenix", ["phoenix-worker-0"])
    await c.finish_pod("phoenix-worker-0", 2)
    await c.wait_pods("phoenix", ["phoenix-worker-0"], attempt=1)
    await c.run_pod("phoenix-worker-0")
    before = await c.wait_phase("phoenix", "Running", restarts=1)
    created = c.pod_creations()
    uid = (await c.pods("phoenix"))["phoenix-worker-0"]["metadata"].get("uid")

    await restart()
    await asyncio.sleep(1.0)  # the new operator has replayed every object by now
    after = await c.status("phoenix")
    assert after["phase"] == "Running" and after["restarts"] == 1
    assert after["startTime"] == before["startTime"] and after["lastFailure"] == before["lastFailure"]
    assert c.pod_creations() == created
    pods = await c.pods("phoenix")
    assert set(pods) == {"phoenix-worker-0"} and pods["phoenix-worker-0"]["metadata"].get("uid") == uid

    await c.finish_pod("phoenix-worker-0")
    status = await c.wait_phase("phoenix", "Succeeded")
    assert status["restarts"] == 1


# ------------------------------------------------------------------ only where a real scheduler and GC run


async def too_big_to_schedule(c: Cluster) -> None:
    """16 GPUs per worker on nodes of 8: the real scheduler's verdict reaches the job's status."""
    await c.create_job("huge", gpusPerWorker=16, nodeSelector=c.node_selector)
    await c.wait_pods("huge", ["huge-worker-0"])
    status = await c.wait_phase("huge", "Pending", timeout=30, reason="Unschedulable")
    assert status["message"].startswith("worker-0 cannot be scheduled: 0/"), status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"], status["message"]
    assert status["workers"]["pending"] == 1


async def garbage_collected(c: Cluster, stop_operator: Callable[[], Awaitable[None]]) -> None:
    """With the operator down, deleting a job still removes its pods and Service: ownerReferences and the
    cluster's garbage collector, not the operator, guarantee it."""
    await c.create_job("orphan", workers={"min": 2, "max": 2}, nodeSelector=c.node_selector)
    names = ["orphan-scheduler", "orphan-server-0", "orphan-server-1", "orphan-worker-0", "orphan-worker-1"]
    await c.wait_pods("orphan", names)
    await c.run_all("orphan")
    await c.wait_phase("orphan", "Running")
    await eventually(lambda: c.api.get(core_path(c.ns, "services", "orphan")), what="the job's Service")
    await stop_operator()
    await c.delete_job("orphan")
    await eventually(lambda: _pod_names(c, "orphan", set()), timeout=60, what="pods garbage-collected")
    await eventually(lambda: _absent(c, core_path(c.ns, "services", "orphan")), timeout=30,
                     what="service garbage-collected")


# A scheduler name no scheduler answers to: the test gives the pods' verdicts itself, when it likes.
LATE_SCHEDULER = "aidi-test-late-scheduler"


async def first_status_waits_for_the_schedulers_verdict(c: Cluster, wait: float) -> None:
    """A new job's first status is written once the scheduler has judged its pods (one write, with the
    verdict in it), not 1 s after the pods as before; with no verdict, ``wait`` s after them (the operator's
    ``--first-status-wait``)."""
    assert wait >= 3, "the checks below need the wait to outlast the 1 s window by 2 s"
    spec = {"schedulerName": LATE_SCHEDULER, "nodeSelector": c.node_selector}
    await c.create_job("judged", **spec)
    await c.create_job("unjudged", **spec)
    await c.wait_pods("judged", ["judged-worker-0"])
    await c.wait_pods("unjudged", ["unjudged-worker-0"])
    made = asyncio.get_running_loop().time()
    await asyncio.sleep(1.5)  # the 1 s window is over: the status would have been written by now
    assert await c.status("judged") == {} and await c.status("unjudged") == {}

    await c.unschedulable("judged-worker-0", "0/2 nodes are available: 2 node(s) didn't match the late verdict.")
    status = await c.wait_phase("judged", "Pending", reason="Unschedulable")
    assert status["message"] == ("worker-0 cannot be scheduled: 0/2 nodes are available: 2 node(s) didn't match "
                                 "the late verdict."), status["message"]

    status = await c.wait_phase("unjudged", "Pending", timeout=wait + 8)
    assert asyncio.get_running_loop().time() - made >= wait - 1.5, "written before the wait was over"
    assert status["workers"]["pending"] == 1
