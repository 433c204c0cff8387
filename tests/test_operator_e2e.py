"""The operator's scenarios against the cluster the current kubeconfig names (kind, k3d, a real one).

Installs the CRD and the PriorityClasses if missing, runs the operator in-process in a throwaway
namespace, and plays the kubelet through pod status patches (the pods select a node label that no node
has, so no real kubelet competes). Skipped when no cluster answers. How to run: docs/operator.md.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import yaml
from aidi_operator.kube import ApiRefused, KubeApi
from aidi_operator.startup import connection_info

from tests.conftest import REPO
from tests.support import operator_scenarios as scenarios
from tests.support.operator import FAST, Cluster, eventually, running_operator

pytestmark = pytest.mark.e2e

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def _install(api: KubeApi) -> None:
    crd = yaml.safe_load((REPO / "crds" / "trainjobs.aidi.io.yaml").read_text())
    await api.create(CRD_PATH, crd)

    async def established() -> bool:
        got = await api.get(f"{CRD_PATH}/{crd['metadata']['name']}")
        conditions = ((got or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    await eventually(established, timeout=30, what="the TrainJob CRD to be established")
    for n in range(1, 6):  # the chart installs these; a bare cluster needs them for pods to be admitted
        await api.create("/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": f"aidi-priority-{n}"}, "value": 1000 * n,
            "description": f"AIDI job priority {n} (installed by the e2e tests)"})


@pytest.fixture()
async def e2e() -> AsyncIterator[tuple[Cluster, object]]:
    settings = replace(FAST, resync_seconds=0.5)
    api = KubeApi(lambda: connection_info(settings))
    await _install(api)
    namespace = f"aidi-e2e-{uuid.uuid4().hex[:8]}"
    await api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": namespace}})
    cluster = Cluster(api, namespace)
    try:
        yield cluster, replace(settings, namespaces=(namespace,))
    finally:
        with contextlib.suppress(ApiRefused):
            await api.delete(f"/api/v1/namespaces/{namespace}")
        await api.close()


async def _run(e2e: tuple[Cluster, object], scenario) -> None:
    cluster, settings = e2e
    async with running_operator(settings):
        await scenario(cluster)


async def test_single_worker_succeeds(e2e) -> None:
    await _run(e2e, scenarios.single_worker_succeeds)


async def test_multi_worker_mxnet_env_and_service(e2e) -> None:
    await _run(e2e, scenarios.multi_worker_mxnet)


async def test_gang_restart_up_to_backoff_limit(e2e) -> None:
    await _run(e2e, scenarios.gang_restart)


async def test_deadline_exceeded(e2e) -> None:
    await _run(e2e, scenarios.deadline)


async def test_suspend_and_resume(e2e) -> None:
    await _run(e2e, scenarios.suspend_and_resume)


async def test_deletion_cascade(e2e) -> None:
    await _run(e2e, scenarios.deletion_cascade)


async def test_ttl_after_finished(e2e) -> None:
    await _run(e2e, scenarios.ttl_after_finished)


async def test_operator_restart_mid_job(e2e) -> None:
    cluster, settings = e2e
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(running_operator(settings))

    async def restart() -> None:
        await stack.aclose()
        await stack.enter_async_context(running_operator(settings))

    try:
        await scenarios.operator_restart(cluster, restart)
    finally:
        await stack.aclose()
