"""The kmock Kubernetes API with the TrainJob resource registered (a real cluster: tests/support/e2e.py)."""

from __future__ import annotations

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
