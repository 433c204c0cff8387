"""The local cluster: run a TrainJob on this machine from the pods the operator would create (docs/local.md).

A ``type: local`` entry in ``gpucluster.yaml`` sends ``traincli`` here. :func:`submit` is the hook
``aidi.cluster.submit`` calls; :func:`client` gives the other commands a client with the methods of
``aidi.cluster.kube.JobClient``, backed by a work folder (``store``) and one detached supervisor process
per job (``supervisor``) that runs the pods' steps as local processes (``pods``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aidi.api.loader import JobFile
from aidi.cluster.gpucluster import ResolvedCluster
from aidi.cluster.submit import SubmitResult
from aidi.jobs import codepkg
from aidi.local.client import LocalJobClient


def client(resolved: ResolvedCluster, namespace: str | None = None) -> LocalJobClient:
    return LocalJobClient.for_cluster(resolved, namespace)


def submit(job_file: JobFile, resolved: ResolvedCluster, *, open_dataspace: Callable[[], Any] | None = None,
           max_bytes: int = codepkg.DEFAULT_MAX_BYTES, password: str | None = None) -> SubmitResult:
    """Submit to the local cluster: the same steps as on Kubernetes (pack, encrypt, upload, Secret, TrainJob),
    then the job's supervisor starts in the background."""
    from aidi.cluster import submit as cluster_submit

    if open_dataspace is None:
        from aidi.dataspace import open_dataspace as open_default

        open_dataspace = open_default
    local = client(resolved, job_file.job.metadata.namespace)
    return cluster_submit.submit(job_file, resolved, open_dataspace=open_dataspace, max_bytes=max_bytes,
                                 password=password, client=local)  # type: ignore[arg-type]
