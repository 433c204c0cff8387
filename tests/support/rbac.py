"""What the operator needs from the cluster, and why (docs/operator.md, "What it needs from the cluster").

One list for both checks of the chart: the rendered Roles (tests/test_chart.py) and what the API server
says the chart's operator ServiceAccount may do (tests/test_platform_e2e.py). A right the chart grants
beyond these fails both: remove it from the chart, or add it here with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Rule = tuple[str, str, str]  # (API group, resource, verb)

NEEDED_IN_JOB_NAMESPACES: frozenset[Rule] = frozenset({
    *{("aidi.io", "trainjobs", v) for v in ("list", "watch", "delete")},  # watch them; TTL deletes
    ("aidi.io", "trainjobs/status", "patch"),  # the status
    *{("", "pods", v) for v in ("list", "watch", "create", "delete")},  # the job's pods
    ("", "pods/log", "get"),  # a failed pod's last lines
    *{("", "services", v) for v in ("create", "delete")},  # the headless Service of multi-worker jobs
    ("", "events", "create"),  # Events on TrainJobs
    *{("scheduling.volcano.sh", "podgroups", v) for v in ("create", "delete")},  # with Volcano only
    *{("networking.k8s.io", "networkpolicies", v) for v in ("create", "delete")},  # one per job: its pods' ingress
})
NEEDED_CLUSTER_WIDE: frozenset[Rule] = frozenset({
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")},  # kopf's discovery
})
NEEDED_WITH_WATCH_NAMESPACES: frozenset[Rule] = frozenset({
    *{("", "namespaces", v) for v in ("list", "watch")},  # kopf follows the namespaces it serves
})


def expand(rules: Iterable[dict[str, Any]]) -> set[Rule]:
    """RBAC rules (a Role's, or a SelfSubjectRulesReview's resourceRules) as (group, resource, verb)."""
    found: set[Rule] = set()
    for rule in rules:
        assert not rule.get("resourceNames"), f"a rule limited to names is not expected here: {rule}"
        for group in rule.get("apiGroups") or [""]:
            for resource in rule["resources"]:
                found |= {(group, resource, verb) for verb in rule["verbs"]}
    return found
