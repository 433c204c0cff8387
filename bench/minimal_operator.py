"""The baseline for ``bench/operator.py --kubeconfig``: the least a kopf operator can do for a TrainJob.

One ``@kopf.on.create`` handler for ``trainjobs.aidi.io/v1alpha1`` that creates exactly one pod owned by the
job, named as the real operator names a 1-worker job's pod (``<job>-worker-0``), with a trivial spec.
Nothing else: no indexes, no pod watch, no status, no resync. It talks to the API server with one shared
``aiohttp`` session (the HTTP client the real operator uses), so the difference to ``aidi-operator`` is
the operator's work, not the client library. kopf's own settings are its defaults except the two the real
operator also sets: Kubernetes Events for warnings only, and the watch timeouts.

Run it as kopf runs any operator (the bench does exactly this, with ``KUBECONFIG`` set)::

    KUBECONFIG=/tmp/k8s-bench/kubeconfig .venv/bin/kopf run --standalone -n NAMESPACE bench/minimal_operator.py
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "aidi.io", "v1alpha1", "trainjobs"


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


def pod_for(name: str) -> dict[str, Any]:
    """The one pod of a job: the name the real operator gives a 1-worker job's pod, nothing else needed."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-worker-0", "labels": {"aidi.io/job": name}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]},
    }


@kopf.on.create(GROUP, VERSION, PLURAL)
async def create(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    pod = pod_for(name)
    kopf.adopt(pod, owner=body)
    async with memo.session.post(f"api/v1/namespaces/{namespace}/pods", data=json.dumps(pod),
                                 headers={"Content-Type": "application/json"}) as resp:
        if resp.status == 409:
            return  # already there (a retry after a lost answer)
        if resp.status >= 400:
            raise kopf.TemporaryError(f"creating pod {pod['metadata']['name']}: {resp.status} "
                                      f"{(await resp.text())[:300]}", delay=1)
