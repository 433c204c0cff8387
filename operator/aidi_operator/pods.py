"""Pod handlers: the operator's pods are indexed by job, and any change of one reconciles its job."""

from __future__ import annotations

from typing import Any

import kopf

from aidi.jobs import podspec
from aidi.jobs.lifecycle import PodState, pod_state
from aidi_operator import trainjobs
from aidi_operator.startup import JobKey, job_key, state_of

# kopf's label filter: a value, or kopf.PRESENT (its token type is not exported, hence Any).
OURS: dict[str, Any] = {podspec.LABEL_JOB: kopf.PRESENT, podspec.LABEL_MANAGED_BY: podspec.MANAGED_BY}


@kopf.index("pods", labels=OURS)
async def pod_index(namespace: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[JobKey, PodState]:
    """(namespace, job) → the compact state of each of its pods. kopf fills it before any handler runs,
    so a restarted operator sees every existing pod before deciding what to create. Async: a sync index
    function costs a hop through kopf's thread pool on every event."""
    return {job_key(namespace, labels[podspec.LABEL_JOB]): pod_state(dict(body))}


@kopf.on.event("pods", labels=OURS)
async def on_pod_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    state.indexed = True
    await trainjobs.reconcile_or_retry(state, job_key(namespace, labels[podspec.LABEL_JOB]))
