"""The operator's own pod watch (aidi_operator.pods) on a real API server: what it lists at start, what it sees
change, a deleted pod, a watch resumed after the server ends it, a 410 Gone answered by listing again, and a
namespace that matches the operator's glob only once it appears."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aidi_operator import pods as podwatch
from aidi_operator.kube import ApiRefused, KubeApi, core_path
from aidi_operator.pods import PodIndex, PodWatch

from aidi.jobs import podspec
from aidi.jobs.lifecycle import PodState
from tests.support import e2e
from tests.support.operator import eventually

pytestmark = pytest.mark.e2e


def pod(name: str, job: str | None, *, ours: bool = True) -> dict[str, Any]:
    labels = {podspec.LABEL_ROLE: "worker", podspec.LABEL_INDEX: "0"}
    if job is not None:
        labels[podspec.LABEL_JOB] = job
    if ours:
        labels[podspec.LABEL_MANAGED_BY] = podspec.MANAGED_BY
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "trainer", "image": "busybox"}], "automountServiceAccountToken": False}}


class Seen:
    """What a PodWatch reports: the jobs whose pods changed, in order."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def __call__(self, key: tuple[str, str]) -> None:
        self.changes.append(key)


async def create_pod(api: KubeApi, namespace: str, body: dict[str, Any]) -> None:
    async def created() -> bool:  # a brand-new namespace refuses pods until its default ServiceAccount exists
        try:
            return await api.create(core_path(namespace, "pods"), body) or True
        except ApiRefused:
            return False
    await eventually(created, timeout=20, what=f"pod {body['metadata']['name']} created")


@contextlib.asynccontextmanager
async def namespace(api: KubeApi, run: str, prefix: str = "aidi-e2e-pw") -> AsyncIterator[str]:
    name = f"{prefix}-{run}-{uuid.uuid4().hex[:6]}"
    await api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": name, "labels": {e2e.E2E_LABEL: run}}})
    try:
        yield name
    finally:
        with contextlib.suppress(ApiRefused):
            await api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture()
async def api(e2e_run: str) -> AsyncIterator[KubeApi]:
    client = KubeApi(e2e.connection)
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def watching(api: KubeApi, patterns: list[str]) -> AsyncIterator[tuple[PodWatch, Seen]]:
    seen = Seen()
    watch = PodWatch(api, patterns, PodIndex(), seen)
    await watch.start()
    try:
        yield watch, seen
    finally:
        await watch.stop()


def has(watch: PodWatch, key: tuple[str, str], check: Callable[[tuple[PodState, ...]], bool]
        ) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return check(watch.index.get(key))
    return probe


async def test_lists_ours_then_sees_changes_and_deletions(api: KubeApi, e2e_run: str) -> None:
    async with namespace(api, e2e_run) as ns:
        await create_pod(api, ns, pod("before-worker-0", "before"))
        await create_pod(api, ns, pod("stranger", "before", ours=False))  # not managed by us: never kept
        async with watching(api, [ns]) as (watch, seen):
            assert watch.synced(ns)
            assert [p.name for p in watch.index.get((ns, "before"))] == ["before-worker-0"]  # listed at start

            await create_pod(api, ns, pod("later-worker-0", "later"))
            await eventually(has(watch, (ns, "later"), lambda pods: len(pods) == 1), what="the new pod")
            first = watch.index.get((ns, "later"))[0]
            assert first.phase == "Pending" and (ns, "later") in seen.changes

            status = {"status": {"phase": "Failed", "reason": "Evicted", "message": "the node ran out of memory"}}
            await api.patch(core_path(ns, "pods", "later-worker-0", "status"), status)
            await eventually(has(watch, (ns, "later"), lambda pods: bool(pods) and pods[0].failed),
                             what="the pod's failure")
            assert watch.index.get((ns, "later"))[0].failure.reason == "Evicted"  # type: ignore[union-attr]

            seen.changes.clear()
            await api.delete(core_path(ns, "pods", "later-worker-0"))
            await eventually(has(watch, (ns, "later"), lambda pods: pods == ()), what="the pod's deletion")
            assert set(seen.changes) == {(ns, "later")}  # marked for deletion, then gone
            assert len(watch.index) == 1


async def test_resumes_after_the_server_ends_the_watch(api: KubeApi, e2e_run: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podwatch, "WATCH_SECONDS", 1)  # the server ends every watch after a second
    async with namespace(api, e2e_run) as ns, watching(api, [ns]) as (watch, _):
        for i in range(3):
            await asyncio.sleep(1.5)  # across a reconnection each time
            await create_pod(api, ns, pod(f"job{i}-worker-0", f"job{i}"))
            await eventually(has(watch, (ns, f"job{i}"), lambda pods: len(pods) == 1), what=f"job{i}'s pod")


GONE_EVENT = (b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
              b'"message":"too old resource version: 1 (299601)","reason":"Expired","code":410}}')


async def _answers_gone(api: KubeApi, namespace: str, version: str) -> bool:
    async for line in api.watch_lines(core_path(namespace, "pods"), {"resourceVersion": version,
                                                                     "timeoutSeconds": "1"}, read_timeout=5):
        return b'"code":410' in line
    return False


def _gone_once(watch_lines: Callable[..., AsyncIterator[bytes]], version: str) -> Callable[..., AsyncIterator[bytes]]:
    async def lines(path: str, params: dict[str, str] | None = None, **kw: Any) -> AsyncIterator[bytes]:
        if (params or {}).get("resourceVersion") == version:
            yield GONE_EVENT
            return
        async for line in watch_lines(path, params, **kw):
            yield line
    return lines


async def test_410_gone_lists_again_and_folds_in_what_changed(api: KubeApi, e2e_run: str,
                                                             caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger=podwatch.__name__)
    async with namespace(api, e2e_run) as ns:
        await create_pod(api, ns, pod("kept-worker-0", "kept"))
        seen = Seen()
        index = PodIndex()
        # What an operator would still hold after a pod was deleted while its watch was away.
        index.put(ns, "ghost", PodState(name="ghost-worker-0", role="worker", index=0, attempt=None, phase="Running"))
        watch = PodWatch(api, [ns], index, seen)
        # Version 1 is long compacted away on a cluster that has run a while: the server answers 410 Gone (an
        # ERROR event). A young control plane (etcd compacts every 5 minutes) still holds every version and
        # would replay them instead, so there the first watch gets the 410 the server sends once it has
        # compacted (its own words, seen on this server); the list and the watch after it are the server's.
        if not await _answers_gone(api, ns, "1"):
            monkeypatch.setattr(api, "watch_lines", _gone_once(api.watch_lines, "1"))
        task = asyncio.create_task(watch._watch(ns, "1"))
        try:
            await eventually(has(watch, (ns, "kept"), lambda pods: len(pods) == 1), what="the relisted pod")
            assert index.get((ns, "ghost")) == () and (ns, "ghost") in seen.changes
            assert f"pods in {ns}: version 1 is gone; listing again" in caplog.messages
            await create_pod(api, ns, pod("after-worker-0", "after"))  # and it watches on from the new list
            await eventually(has(watch, (ns, "after"), lambda pods: len(pods) == 1), what="a pod after the relist")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_namespace_matching_the_glob_later_is_watched(api: KubeApi, e2e_run: str) -> None:
    prefix = f"aidi-e2e-glob{uuid.uuid4().hex[:4]}"
    async with namespace(api, e2e_run, prefix) as early, watching(api, [f"{prefix}-*"]) as (watch, _):
        assert watch.synced(early)
        async with namespace(api, e2e_run, prefix) as later, namespace(api, e2e_run) as other:
            assert await watch.wait_synced(later, timeout=20)
            await create_pod(api, later, pod("late-worker-0", "late"))
            await create_pod(api, other, pod("elsewhere-worker-0", "elsewhere"))  # not served: not kept
            await eventually(has(watch, (later, "late"), lambda pods: len(pods) == 1), what="the later namespace's pod")
            await asyncio.sleep(1)
            assert watch.index.get((other, "elsewhere")) == () and not watch.synced(other)
