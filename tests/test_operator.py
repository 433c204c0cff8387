"""The real kopf operator, in-process, against the kmock API server; the test plays the kubelet."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import kmock
import kopf
import pytest
import yaml
from aidi_operator.kube import ApiRefused, core_path
from aidi_operator.main import main

from aidi.jobs import podspec
from tests.support import operator_scenarios as scenarios
from tests.support.operator import Cluster, eventually, kmock_api, operator_settings, running_operator

NAMESPACE = "team-a"


class KmockCluster(Cluster):
    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        super().__init__(kmock_api(str(server.url)), NAMESPACE)
        self.server = server

    def pod_creations(self) -> int:
        return sum(1 for r in list(self.server)
                   if r.method == kmock.method.POST and r.resource is not None and r.resource.plural == "pods")


@pytest.fixture()
async def cluster(kube_api) -> AsyncIterator[KmockCluster]:
    kube_api["get", kmock.subresource("log")] << b"epoch 3 loss 0.41\nCUDA error: out of memory\n"
    c = KmockCluster(kube_api)
    async with running_operator(operator_settings(str(kube_api.url))):
        yield c
    await c.api.close()


async def test_single_worker_succeeds(cluster) -> None:
    await scenarios.single_worker_succeeds(cluster)
    first_unschedulable = next(r.data["status"]["message"] for r in list(cluster.server)
                               if r.method == kmock.method.PATCH and str(r.url).endswith("/single/status")
                               and r.data["status"].get("reason") == "Unschedulable")
    assert first_unschedulable == ("worker-0 cannot be scheduled: 0/3 nodes are available: "
                                   "3 Insufficient nvidia.com/gpu.")


async def test_multi_worker_mxnet_env_and_service(cluster) -> None:
    await scenarios.multi_worker_mxnet(cluster)


async def test_the_isolation_policy_is_there_before_any_pod(cluster) -> None:
    """A job's pods are closed from the moment they exist: the namespace's isolation policy is created before
    the first of them (the job's own policy waits until a pod is placed), once for all the jobs."""
    await cluster.create_job("first", nodeSelector=cluster.node_selector)
    await cluster.create_job("second", workers={"min": 2, "max": 2}, nodeSelector=cluster.node_selector)
    await cluster.wait_pods("second", ["second-scheduler", "second-server-0", "second-server-1",
                                       "second-worker-0", "second-worker-1"])
    posts = [r for r in list(cluster.server) if r.method == kmock.method.POST and r.resource is not None
             and r.resource.plural in ("pods", "networkpolicies")]
    isolation = [i for i, r in enumerate(posts) if r.data["metadata"]["name"] == podspec.ISOLATION_POLICY]
    first_pod = min(i for i, r in enumerate(posts) if r.resource.plural == "pods")
    assert isolation and isolation[0] < first_pod, [r.data["metadata"]["name"] for r in posts]
    assert len(isolation) == 1  # once for both jobs, not once a job


async def test_first_status_waits_for_the_schedulers_verdict(kube_api) -> None:
    cluster = KmockCluster(kube_api)
    async with running_operator(operator_settings(str(kube_api.url), first_status_wait_seconds=3.0)):
        await scenarios.first_status_waits_for_the_schedulers_verdict(cluster, wait=3.0)
    await cluster.api.close()
    writes = [r.data["status"] for r in list(kube_api) if r.method == kmock.method.PATCH
              and str(r.url).endswith("/judged/status")]
    assert len(writes) == 1 and writes[0]["reason"] == "Unschedulable", writes  # one write, the verdict in it


async def test_gang_restart_up_to_backoff_limit(cluster) -> None:
    await scenarios.gang_restart(cluster)
    status = await cluster.status("gang")
    # The failed pod's last log lines outlive the pod: in the status and in an Event on the job.
    assert status["lastFailure"]["logTail"].endswith("CUDA error: out of memory")
    events = [r.data for r in list(cluster.server) if r.method == kmock.method.POST and r.resource is not None
              and r.resource.plural == "events"]
    failed = [e for e in events if e["reason"] == "PodFailed"]
    assert failed and failed[0]["involvedObject"]["name"] == "gang"
    assert failed[0]["message"].endswith("last log lines of trainer:\nepoch 3 loss 0.41\nCUDA error: out of memory")


async def test_deadline_exceeded(cluster) -> None:
    await scenarios.deadline(cluster)


async def test_suspend_deletes_pods_and_resume_recreates_them(cluster) -> None:
    await scenarios.suspend_and_resume(cluster)


async def test_deletion_cascade(cluster) -> None:
    await scenarios.deletion_cascade(cluster)


async def test_ttl_after_finished(cluster) -> None:
    await scenarios.ttl_after_finished(cluster)


async def test_operator_restart_mid_job(kube_api) -> None:
    c = KmockCluster(kube_api)
    settings = operator_settings(str(kube_api.url))
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(running_operator(settings))

    async def restart() -> None:
        await stack.aclose()
        await stack.enter_async_context(running_operator(settings))

    try:
        await scenarios.operator_restart(c, restart)
    finally:
        await stack.aclose()
        await c.api.close()


async def test_invalid_spec_fails_naming_the_field_and_recovers_when_fixed(cluster) -> None:
    # A real API server rejects this through the CRD's CEL rule; the operator must not crash-loop on it.
    await cluster.create_job("bad")
    await cluster.api.patch(cluster.job_path("bad"), {"spec": {"workers": {"min": 3, "max": 1}}})
    status = await cluster.wait_phase("bad", "Failed", reason="InvalidSpec")
    assert "spec.workers" in status["message"]
    assert "workers.min (3) is greater than workers.max (1)" in status["message"]

    await cluster.patch_job("bad", {"workers": {"min": 1, "max": 1}})
    await cluster.wait_phase("bad", "Pending")
    await cluster.wait_pods("bad", ["bad-worker-0"])


async def test_exit_code_policy_fails_at_once_on_an_ordinary_exit(cluster) -> None:
    await cluster.create_job("strict", restartPolicy="ExitCode", backoffLimit=3)
    await cluster.wait_pods("strict", ["strict-worker-0"])
    await cluster.finish_pod("strict-worker-0", 2)
    status = await cluster.wait_phase("strict", "Failed")
    assert status["restarts"] == 0 and status["reason"] == "WorkerFailed"
    assert status["message"] == "worker-0 exited with code 2; restartPolicy ExitCode does not restart it"


async def test_refused_pod_creation_is_reported(cluster) -> None:
    refusal = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": 'pods "nopc-worker-0" is forbidden: no PriorityClass with name aidi-priority-3 was found'}
    cluster.server["post", kmock.resource("pods")] << kmock.Response(status=403, payload=refusal)
    await cluster.create_job("nopc")

    # kmock stores a created object even when a reaction answers 403, so the next reconcile finds the pod:
    # look for the refusal in the status the operator wrote first.
    async def refusal_reported() -> dict | None:
        for request in list(cluster.server):
            if request.method == kmock.method.PATCH and str(request.url).endswith("/trainjobs/nopc/status"):
                status = request.data["status"]
                if status.get("reason") == "CreateFailed":
                    return status
        return None

    status = await eventually(refusal_reported, what="a CreateFailed status")
    assert status["phase"] == "Pending"
    assert status["message"] == ('cannot create the job\'s pods: pods "nopc-worker-0" is forbidden: no PriorityClass '
                                 "with name aidi-priority-3 was found (retrying every 10 s)")


async def test_every_worker_gets_the_sync_step_and_servers_no_datasets(cluster) -> None:
    await cluster.create_job("out", workers={"min": 2, "max": 2},
                             dataSpace={"output": {"name": "models"}, "inputs": [{"name": "adasmini_4pe"}]})
    pods = await cluster.wait_pods("out", ["out-scheduler", "out-server-0", "out-server-1", "out-worker-0",
                                           "out-worker-1"])
    containers = {n: [c["name"] for c in p["spec"]["containers"]] for n, p in pods.items()}
    assert containers["out-worker-0"] == [podspec.MAIN_CONTAINER, podspec.SYNC_CONTAINER]
    # Every worker can sync: only the one whose trainer is ps-lite's rank 0 does (podspec.RANK_FILE).
    assert containers["out-worker-1"] == [podspec.MAIN_CONTAINER, podspec.SYNC_CONTAINER]
    assert containers["out-server-0"] == [podspec.MAIN_CONTAINER]
    inits = [c["name"] for c in pods["out-server-0"]["spec"].get("initContainers", [])]
    assert podspec.FETCH_DATA_CONTAINER not in inits  # servers need no datasets


async def test_liveness_endpoint_answers(kube_api) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with running_operator(operator_settings(str(kube_api.url), liveness_port=port, liveness_host="127.0.0.1")):
        async def healthy() -> dict | None:
            try:
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    return await r.json() if r.status == 200 else None
            except aiohttp.ClientError:
                return None

        report = await eventually(healthy, what="GET /healthz")
    assert report == {"trainjobs": 0, "resync": True}


async def test_runs_against_the_current_kubeconfig(kube_api, tmp_path, monkeypatch) -> None:
    """No --server: the operator logs in the way `aidi-operator` on a workstation does."""
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": str(kube_api.url).rstrip("/")}}],
        "users": [{"name": "me", "user": {"token": "dev-token"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    c = KmockCluster(kube_api)
    async with running_operator(operator_settings(None)):
        await c.create_job("kc")
        await c.wait_pods("kc", ["kc-worker-0"])
    await c.api.close()
    pod_posts = [r for r in list(kube_api) if r.method == kmock.method.POST and r.resource is not None
                 and r.resource.plural == "pods"]
    assert pod_posts[0].headers["Authorization"] == "Bearer dev-token"


def test_without_credentials_the_command_says_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--liveness-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("aidi-operator: error: no Kubernetes credentials: run inside a cluster, set KUBECONFIG "
                           "(or ~/.kube/config), or pass --server URL")


async def test_api_client_maps_answers_to_what_reconcile_needs(kube_api) -> None:
    api = kmock_api(str(kube_api.url))
    pods = core_path(NAMESPACE, "pods")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NAMESPACE}}
    assert await api.create(pods, pod) is True
    assert await api.create(pods, pod) is False  # 409 "already exists" is success
    assert await api.get(core_path(NAMESPACE, "pods", "nothing")) is None
    assert await api.delete(core_path(NAMESPACE, "pods", "nothing")) is False
    kube_api["get", kmock.name("busy")] << kmock.Response(status=503, payload={"message": "etcd is busy"})
    with pytest.raises(kopf.TemporaryError, match="503 etcd is busy"):
        await api.get(core_path(NAMESPACE, "pods", "busy"))
    kube_api["get", kmock.name("quota")] << kmock.Response(status=403, payload={
        "kind": "Status", "message": 'pods "quota" is forbidden: exceeded quota: gpus'})
    with pytest.raises(ApiRefused, match="exceeded quota: gpus"):
        await api.get(core_path(NAMESPACE, "pods", "quota"))
    await api.close()


async def test_resync_skips_unchanged_jobs_and_a_pod_change_still_reconciles(cluster, monkeypatch) -> None:
    """Nothing changed, nothing decided: the resync (every 0.3 s here) passes over a settled job without
    reconciling it; a change of one of its pods, seen only through the pod index, reconciles it soon."""
    from aidi_operator import trainjobs

    decided: list[str] = []
    decide = trainjobs.lifecycle.decide

    def counting(job, *args, **kwargs):
        decided.append(job.metadata.name)
        return decide(job, *args, **kwargs)

    monkeypatch.setattr(trainjobs.lifecycle, "decide", counting)
    await cluster.create_job("quiet", nodeSelector=cluster.node_selector)
    await cluster.wait_pods("quiet", ["quiet-worker-0"])
    await cluster.wait_phase("quiet", "Pending")
    await eventually(lambda: _quiet_for(decided, 1.0), timeout=10, what="no more reconciles")
    before = len(decided)
    await asyncio.sleep(1.5)  # five resync passes
    assert len(decided) == before

    await cluster.run_pod("quiet-worker-0")
    await cluster.wait_phase("quiet", "Running")
    assert len(decided) > before


async def _quiet_for(decided: list[str], seconds: float) -> bool:
    count = len(decided)
    await asyncio.sleep(seconds)
    return len(decided) == count


async def test_api_client_waits_for_a_free_connection_without_timing_out() -> None:
    """A burst bigger than the connection pool (64) against a slow server: every request is answered. The
    timeout is per socket operation, so waiting for a connection is not taken for a server that does not
    answer; a server that stops answering still fails the request."""
    from aidi_operator.kube import KubeApi
    from aiohttp import web

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5 if request.match_info["name"] == "stuck" else 0.2)
        return web.json_response({"kind": "Pod"}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    api = KubeApi(lambda: kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", insecure=True), timeout=1.0)
    try:
        # 256 requests, 64 at a time, 0.2 s each: the last ones wait ~0.6 s for a connection, then 0.2 s.
        done = await asyncio.gather(*(api.create(core_path(NAMESPACE, "pods", f"p{i}"), {}) for i in range(256)))
        assert done == [True] * 256
        with pytest.raises(kopf.TemporaryError, match="did not answer"):
            await api.create(core_path(NAMESPACE, "pods", "stuck"), {})
    finally:
        await api.close()
        await runner.cleanup()


async def test_a_reconcile_waits_for_the_pods_it_just_created() -> None:
    """Pods created but not yet in the watch's view are not missing: no second creation (a burst's 409s),
    until they show up — or until OWN_PODS_WAIT says they are lost after all."""
    from aidi_operator import trainjobs
    from aidi_operator.pods import PodIndex
    from aidi_operator.startup import OperatorSettings, OperatorState

    from aidi.jobs.lifecycle import PodState

    state, key = OperatorState(OperatorSettings()), ("team-a", "j")
    state.pods = PodIndex()
    loop = asyncio.get_running_loop()
    made = frozenset({("j-worker-0", 0), ("j-worker-1", 0)})
    state.expected[key] = (made, loop.time() + 30)
    assert trainjobs.awaiting_own_pods(state, key)
    assert 29 < state.due[key] - loop.time() <= 30  # woken at the latest when the wait is over

    def seen(name: str, attempt: int) -> None:
        state.pods.put("team-a", "j", PodState(name=name, role="worker", index=0, attempt=attempt, phase="Pending"))
    seen("j-worker-0", 0)
    seen("j-worker-1", 1)  # the same name from another attempt is not the pod just made
    assert trainjobs.awaiting_own_pods(state, key)
    seen("j-worker-1", 0)
    assert not trainjobs.awaiting_own_pods(state, key) and key not in state.expected

    state.expected[key] = (frozenset({("j-worker-2", 0)}), loop.time() - 0.1)  # never shown, wait over
    assert not trainjobs.awaiting_own_pods(state, key) and key not in state.expected
    assert not trainjobs.awaiting_own_pods(state, ("team-a", "other"))  # nothing created: nothing to wait for


async def test_wakeups_reconcile_each_due_job_once_and_drop_stale_entries(monkeypatch) -> None:
    """A job woken earlier than planned, or forgotten, leaves an entry in the heap: dropped as soon as it is on
    top, never woken for (after a burst of 5,000 jobs, one a job at its first-status limit cost 2 % of a core)."""
    from aidi_operator import trainjobs
    from aidi_operator.startup import OperatorSettings, OperatorState

    state = OperatorState(OperatorSettings())
    reconciled: list[tuple[str, str]] = []

    async def reconcile(_state: OperatorState, key: tuple[str, str]) -> None:
        reconciled.append(key)
    monkeypatch.setattr(trainjobs, "reconcile_or_retry", reconcile)
    early, late, gone = ("team-a", "early"), ("team-a", "late"), ("team-a", "gone")
    state.wake(early, 30.0)
    state.wake(early, 0.05)  # moved earlier: the 30 s entry is stale
    state.wake(late, 0.3)
    state.wake(gone, 0.1)
    state.forget(gone)  # deleted meanwhile: its entry is stale
    loop = asyncio.create_task(trainjobs.wakeups(state))
    try:
        await asyncio.sleep(0.15)
        assert reconciled == [early]
        assert gone not in [key for _, key in state.due_heap]  # dropped once on top, before its time
        await asyncio.sleep(0.3)
        assert reconciled == [early, late]
        assert not state.due_heap and not state.due  # early's 30 s entry too, as soon as it was on top
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_wakeups_run_at_most_the_workers_reconciles_at_once(monkeypatch) -> None:
    """Jobs due beyond ``RECONCILE_WORKERS`` wait in the heap (a key each), not as started reconciles holding
    their pods' manifests while the API server is the bottleneck; each starts as a worker frees up."""
    from aidi_operator import trainjobs
    from aidi_operator.startup import OperatorSettings, OperatorState

    monkeypatch.setattr(trainjobs, "RECONCILE_WORKERS", 2)
    state = OperatorState(OperatorSettings())
    release = asyncio.Event()
    running, most, started = 0, 0, []

    async def reconcile(_state: OperatorState, key: tuple[str, str]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        started.append(key[1])
        await release.wait()
        running -= 1
    monkeypatch.setattr(trainjobs, "reconcile_or_retry", reconcile)
    for i in range(5):
        state.wake(("team-a", f"j{i}"), 0)
    loop = asyncio.create_task(trainjobs.wakeups(state))
    try:
        await asyncio.sleep(0.1)
        assert started == ["j0", "j1"] and len(state.due) == 3  # the rest wait their turn, in order
        release.set()
        await eventually(lambda: asyncio.sleep(0, len(started) == 5), timeout=2, what="every job reconciled")
        assert most == 2 and not state.due
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
