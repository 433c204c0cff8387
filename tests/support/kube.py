"""The kmock Kubernetes API with the TrainJob resource registered, and a probe for a real cluster."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import kmock

from aidi.api import trainjob as tj


def register_trainjobs(api: Any) -> None:
    """Serve built-in kinds and TrainJobs (with a status subresource) on a kmock emulator.

    kmock does not serve a resource because a CRD object was applied: it has to be registered.
    """
    api.resources.load_bundled()
    api.resources[f"{tj.GROUP}/{tj.VERSION}/{tj.PLURAL}"] = kmock.ResourceInfo(
        kind=tj.KIND,
        singular=tj.SINGULAR,
        shortnames=set(tj.SHORT_NAMES),
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
        subresources={"status"},
    )
    # Group discovery for kopf and the kubernetes client.
    api.resources["scheduling.volcano.sh/v1beta1/podgroups"] = kmock.ResourceInfo(
        kind="PodGroup", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
    )


def kubeconfig_cluster_reason() -> str | None:
    """None when the current kubeconfig names a cluster that answers; otherwise why not (for a skip)."""
    config = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config"))
    if not any(os.path.exists(p) for p in config.split(os.pathsep)) and "KUBERNETES_SERVICE_HOST" not in os.environ:
        return f"no kubeconfig at {config} and not in a cluster: e2e tests need a cluster (kind, k3d, ...)"
    try:
        from kubernetes import client
        from kubernetes import config as kconfig

        try:
            kconfig.load_kube_config()
        except Exception:
            kconfig.load_incluster_config()
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # any failure means "no usable cluster" for a skip
        return f"the current kubeconfig's cluster does not answer: {type(exc).__name__}: {exc}"[:300]
    return None


def kubectl_available() -> bool:
    try:
        subprocess.run(["kubectl", "version", "--client"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True
