"""Run the real operator in-process, and play the kubelet by patching pod status.

Used by the kmock integration tests and the e2e suite (a real API server: ``ScheduledCluster``, with the
operator as its own process, tests/support/e2e.py). The same scenario code drives both: it only talks
HTTP through ``KubeApi``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import kopf
from aidi_operator.kube import KubeApi, core_path, trainjob_path
from aidi_operator.main import operate
from aidi_operator.startup import OperatorSettings

from aidi.api import trainjob as tj
from aidi.jobs import podspec

T = TypeVar("T")

# Short timers so that each scenario takes a few seconds. kmock has no scheduler: a new job's first status
# is written 1 s after its pods, as it would be once a scheduler had judged them.
FAST = OperatorSettings(liveness_port=0, resync_seconds=0.3, log_tail_lines=20, first_status_wait_seconds=1.0)


def kmock_api(url: str) -> KubeApi:
    return KubeApi(lambda: kopf.ConnectionInfo(server=url, insecure=True))


def _quick_kopf(settings: kopf.OperatorSettings) -> None:
    # kmock sets no resourceVersion, so kopf would wait out its consistency timeout after its own patches.
    settings.queueing.idle_timeout = 0.3
    settings.persistence.consistency_timeout = 0.3


@contextlib.asynccontextmanager
async def running_operator(settings: OperatorSettings) -> AsyncIterator[threading.Thread]:
    """The operator, in its own thread and event loop, until the block ends (stopped as SIGTERM stops it).

    Its own loop, because kopf at exit cancels every task started after it in its loop; in the test's
    loop that would include the test's own tasks and the kmock server's connection handlers.
    """
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(operate(settings, stop_flag=stop, ready_flag=ready, tune=_quick_kopf))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="aidi-operator", daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait, 20)
    if errors:
        raise errors[0]
    try:
        yield thread
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        if errors:
            raise errors[0]


def operator_settings(server: str | None, **changes: Any) -> OperatorSettings:
    return replace(FAST, server=server, **changes)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 8.0, interval: float = 0.05,
                     what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


def trainjob(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A TrainJob manifest with a uid (kmock sets none; owner references need one)."""
    body = {"command": ["bash", "-c", "${WORKING_PATH}/run.sh"], "gpusPerWorker": 1} | spec
    job = tj.TrainJob.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})
    wire = job.to_wire()
    wire["metadata"]["uid"] = str(uuid.uuid4())
    return wire


class Cluster:
    """The test's side of the API: create jobs, read what the operator made, play the kubelet.

    Here the test plays the scheduler too: pods select a node label no node has (so that on a real
    server no kubelet competes), and ``unschedulable`` writes the scheduler's verdict.
    """

    plays_scheduler = True

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.node_selector = {"aidi.io/e2e-no-such-node": "true"}

    async def create_job(self, name: str, **spec: Any) -> dict[str, Any]:
        """Create a TrainJob; returns it as the API server stored it (its uid, defaults, resourceVersion)."""
        body = trainjob(name, self.ns, **spec)
        assert await self.api.create(trainjob_path(self.ns), body)
        stored = await self.job(name)
        assert stored is not None
        return stored

    def job_path(self, name: str) -> str:
        return trainjob_path(self.ns, name)

    def pod_creations(self) -> int | None:
        """How many pod creations the API server saw (kmock only: a real cluster answers None)."""
        return None

    async def job(self, name: str) -> dict[str, Any] | None:
        return await self.api.get(trainjob_path(self.ns, name))

    async def status(self, name: str) -> dict[str, Any]:
        job = await self.job(name)
        return (job or {}).get("status") or {}

    async def patch_job(self, name: str, spec: dict[str, Any]) -> None:
        await self.api.patch(trainjob_path(self.ns, name), {"spec": spec})

    async def delete_job(self, name: str) -> None:
        await self.api.delete(trainjob_path(self.ns, name))

    async def pods(self, job: str) -> dict[str, dict[str, Any]]:
        items = await self.api.list(core_path(self.ns, "pods"), {podspec.LABEL_JOB: job})
        return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}

    async def wait_pods(self, job: str, names: list[str], timeout: float = 8.0,
                        attempt: int | None = None) -> dict[str, dict[str, Any]]:
        async def probe() -> tuple[dict[str, dict[str, Any]]] | None:
            pods = await self.pods(job)
            if set(pods) != set(names):
                return None
            if attempt is not None and any(p["metadata"]["labels"][podspec.LABEL_ATTEMPT] != str(attempt)
                                           for p in pods.values()):
                return None
            return (pods,)  # truthy even when no pod is expected
        (pods,) = await eventually(probe, timeout, what=f"pods {names} (attempt {attempt})")
        return pods

    async def wait_phase(self, job: str, phase: str, timeout: float = 8.0, **fields: Any) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            st = await self.status(job)
            ok = st.get("phase") == phase and all(st.get(k) == v for k, v in fields.items())
            return st if ok else None
        return await eventually(probe, timeout, what=f"{job} phase {phase} {fields or ''}")

    # ------------------------------------------------------------------------------ the kubelet's part

    async def set_pod_status(self, pod: str, status: dict[str, Any]) -> None:
        await self.api.patch(core_path(self.ns, "pods", pod, "status"), {"status": status})

    async def bound(self, pod: str) -> None:
        """Wait until the pod may run: here at once (no scheduler); ``ScheduledCluster`` waits for binding."""

    async def run_pod(self, pod: str) -> None:
        await self.bound(pod)
        started = "2026-01-01T00:00:00Z"
        await self.set_pod_status(pod, {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [_container_status({"running": {"startedAt": started}}, ready=True)]})

    async def finish_pod(self, pod: str, exit_code: int = 0, reason: str | None = None) -> None:
        await self.bound(pod)
        terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        await self.set_pod_status(pod, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [_container_status({"terminated": terminated})]})

    async def unschedulable(self, pod: str, message: str) -> None:
        await self.set_pod_status(pod, {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]})

    async def run_all(self, job: str) -> None:
        for name in await self.pods(job):
            await self.run_pod(name)


class ScheduledCluster(Cluster):
    """A real API server with nodes: the real scheduler binds pods to them, the test plays their kubelet.

    Pods select this run's nodes (``node_selector``); a pod runs or finishes only once it is bound.
    """

    plays_scheduler = False

    def __init__(self, api: KubeApi, namespace: str, node_selector: dict[str, str]) -> None:
        super().__init__(api, namespace)
        self.node_selector = node_selector

    async def bound(self, pod: str) -> None:
        async def node() -> str | None:
            got = await self.api.get(core_path(self.ns, "pods", pod))
            return ((got or {}).get("spec") or {}).get("nodeName")
        await eventually(node, timeout=15, what=f"the scheduler to bind {pod}")


def _container_status(state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    """A container status as complete as a real API server's validation wants it."""
    return {"name": podspec.MAIN_CONTAINER, "image": "aidi/jobimage:0.1.0", "imageID": "", "ready": ready,
            "restartCount": 0, "state": state}
