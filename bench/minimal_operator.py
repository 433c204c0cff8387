"""The baseline for ``bench/operator.py --kubeconfig``: the least a kopf operator can do for a TrainJob.

One ``@kopf.on.create`` handler for ``trainjobs.aidi.io/v1alpha1`` that creates the job's pods, owned by the
job, named as the real operator names them, with a trivial spec: ``<job>-worker-0`` alone, or the names
``$MINIMAL_OPERATOR_PODS`` lists (suffixes, comma-separated: the bench sets the 2-worker job's five,
``worker-0,worker-1,server-0,server-1,scheduler``), all at once.
Nothing else: no indexes, no pod watch, no status, no resync. It talks to the API server with one shared
``aiohttp`` session (the HTTP client the real operator uses), so the difference to ``aidi-operator`` is
the operator's work, not the client library. kopf's own settings are its defaults except the two the real
operator also sets: Kubernetes Events for warnings only, and the watch timeouts.

Run it as kopf runs any operator (the bench does exactly this, with ``KUBECONFIG`` set)::

    KUBECONFIG=/tmp/k8s-bench/kubeconfig .venv/bin/kopf run --standalone -n NAMESPACE bench/minimal_operator.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "aidi.io", "v1alpha1", "trainjobs"
SUFFIXES = [s.strip() for s in os.environ.get("MINIMAL_OPERATOR_PODS", "worker-0").split(",") if s.strip()]


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    info = kopf.login_with_kubeconfig(settings=settings, logger=logger)
    if info is None:
        raise kopf.PermanentError("no kubeconfig: set KUBECONFIG")
    memo.session = aiohttp.ClientSession(
        base_url=info.server.rstrip("/") + "/",
        connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=64),
        headers=info.as_http_headers())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    session = getattr(memo, "session", None)
    if session is not None:
        await session.close()


def pod_for(name: str, suffix: str = "worker-0") -> dict[str, Any]:
    """A pod of a job, with the name the real operator gives it, nothing else needed."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-{suffix}", "labels": {"aidi.io/job": name}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]},
    }


@kopf.on.create(GROUP, VERSION, PLURAL)
async def create(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await asyncio.gather(*(create_pod(pod_for(name, suffix), body, namespace, memo) for suffix in SUFFIXES))


async def create_pod(pod: dict[str, Any], body: kopf.Body, namespace: str, memo: kopf.Memo) -> None:
    kopf.adopt(pod, owner=body)
    async with memo.session.post(f"api/v1/namespaces/{namespace}/pods", data=json.dumps(pod),
                                 headers={"Content-Type": "application/json"}) as resp:
        if resp.status == 409:
            return  # already there (a retry after a lost answer)
        if resp.status >= 400:
            raise kopf.TemporaryError(f"creating pod {pod['metadata']['name']}: {resp.status} "
                                      f"{(await resp.text())[:300]}", delay=1)
