"""The NetworkPolicies of jobs (``aidi.jobs.podspec``): a namespace's isolation policy, then each job's own.

The isolation policy closes every pod the operator makes in a namespace; it is made before the first job's
pods there (and made again every ``ISOLATION_REFRESH`` seconds, should someone have deleted it). A job's own
policy, owned by the TrainJob so that the garbage collector removes it with the job, opens the job's pods to
each other; it is made once the first of them is placed on a node (nothing can connect to a pod before), the
isolation policy covering them until then. "Already there" and "already gone" are both success. A cluster
without the networking API (none in practice) refuses; that is reported as any refused child is, in the
job's status.
"""

from __future__ import annotations

import asyncio

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi_operator.kube import KubeApi, group_path

API_VERSION = "networking.k8s.io/v1"
PLURAL = "networkpolicies"
ISOLATION_REFRESH = 60.0  # seconds: how often a namespace's isolation policy is made again (one refused write)


def path(namespace: str, name: str | None = None) -> str:
    return group_path(API_VERSION, namespace, PLURAL, name)


async def create(api: KubeApi, job: tj.TrainJob, owner_uid: str | None) -> None:
    """The job's own policy."""
    await api.create(path(job.metadata.namespace or "default"), podspec.build_network_policy(job, owner_uid))


class Isolation:
    """Each namespace's isolation policy, made once for all the jobs that arrive together, then now and then."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[float, asyncio.Future[bool]]] = {}

    async def ensure(self, api: KubeApi, namespace: str) -> None:
        now = asyncio.get_running_loop().time()
        made = self._made.get(namespace)
        if made is None or (made[1].done() and (made[1].exception() is not None
                                                or now - made[0] >= ISOLATION_REFRESH)):
            made = now, asyncio.ensure_future(api.create(path(namespace), podspec.build_isolation_policy(namespace)))
            self._made[namespace] = made
        # Shielded: a reconcile cancelled meanwhile does not cancel the creation the others wait for.
        await asyncio.shield(made[1])


async def delete(api: KubeApi, namespace: str, name: str) -> None:
    await api.delete(path(namespace, name))
