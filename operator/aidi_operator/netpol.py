"""The NetworkPolicy of a job (``aidi.jobs.podspec.build_network_policy``): made before its pods, owned by the
TrainJob so that the garbage collector removes it with the job, deleted with the job's other children.

Kept apart from the reconcile loop on purpose: one call to make, one to delete, "already there" and "already
gone" both success. A cluster without the networking API (none in practice) refuses; that is reported the
same way as any refused child, in the job's status.
"""

from __future__ import annotations

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi_operator.kube import KubeApi, group_path

API_VERSION = "networking.k8s.io/v1"
PLURAL = "networkpolicies"


async def ensure(api: KubeApi, job: tj.TrainJob, owner_uid: str | None) -> None:
    namespace = job.metadata.namespace or "default"
    await api.create(group_path(API_VERSION, namespace, PLURAL), podspec.build_network_policy(job, owner_uid))


async def delete(api: KubeApi, namespace: str, name: str) -> None:
    await api.delete(group_path(API_VERSION, namespace, PLURAL, name))
