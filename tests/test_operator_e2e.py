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
from aidi_operator.kube import ApiRefused, KubeApi
from aidi_operator.startup import connection_info

from tests.support import operator_scenarios as scenarios
from tests.support.operator import FAST, Cluster, install_crd, running_operator

pytestmark = pytest.mark.e2e

@pytest.fixture()
async def e2e() -> AsyncIterator[tuple[Cluster, object]]:
    settings = replace(FAST, resync_seconds=0.5)
    api = KubeApi(lambda: connection_info(settings))
    await install_crd(api)
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
