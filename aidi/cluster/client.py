"""The one job-client interface, and the one place that picks an implementation for a cluster.

``traincli``, ``hitc evaltask``, the console and :mod:`aidi.cluster.jobs` / :mod:`aidi.cluster.submit` talk to
a :class:`JobClient`; :func:`connect` returns the Kubernetes client (:class:`aidi.cluster.kube.KubeJobClient`)
or, for a ``type: local`` entry of ``gpucluster.yaml``, the local cluster's
(:class:`aidi.local.client.LocalJobClient`, docs/local.md). Nothing else knows that ``aidi.local`` exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from aidi.cluster.gpucluster import ResolvedCluster


class JobClient(Protocol):
    """TrainJobs, their code Secret and their pods in one namespace."""

    namespace: str

    def close(self) -> None: ...

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]: ...

    def get_job(self, name: str) -> dict[str, Any]: ...

    def job_exists(self, name: str) -> bool: ...

    def list_jobs(self) -> list[dict[str, Any]]: ...

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    def delete_job(self, name: str) -> None: ...

    def put_password_secret(self, secret_name: str, job_name: str, password: str,
                            owner: dict[str, Any] | None = None) -> None: ...

    def secret_exists(self, secret_name: str) -> bool: ...

    def delete_secret(self, secret_name: str) -> bool: ...

    def job_pods(self, name: str) -> list[dict[str, Any]]: ...

    def pod_log(self, pod: str, container: str | None, tail: int | None = None, previous: bool = False) -> str: ...

    def stream_log(self, pod: str, container: str | None, tail: int | None = None) -> Iterator[bytes]: ...


def connect(resolved: ResolvedCluster, namespace: str | None = None) -> JobClient:
    """The client for ``resolved`` (its namespace unless ``namespace`` is given)."""
    if resolved.cluster.type == "local":
        from aidi.local.client import LocalJobClient  # the embedded single-machine runner (docs/local.md)

        return LocalJobClient.for_cluster(resolved, namespace)
    from aidi.cluster.kube import KubeJobClient  # the kubernetes package loads only when a cluster is used

    return KubeJobClient.for_cluster(resolved, namespace)
