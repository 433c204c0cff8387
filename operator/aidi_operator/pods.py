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
async def pod_index(namespace: str | None, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo,
                    **_: Any) -> dict[JobKey, PodState]:
    """(namespace, job) → the compact state of each of its pods. kopf fills it before any handler runs,
    so a restarted operator sees every existing pod before deciding what to create. Async: a sync index
    function costs a hop through kopf's thread pool on every event.

    Every change of a pod also reconciles its job, soon: not from a pod event handler, which would cost
    kopf's whole handler machinery per pod event (a 2-worker job's five pods make ten events when
    created, within a second), and not at once — the pods' changes of the same moment fold into one
    reconcile (``trainjobs.POD_CHANGE_DELAY``), which reads this index as it is by then.
    """
    key = job_key(namespace, labels[podspec.LABEL_JOB])
    trainjobs.pod_changed(state_of(memo), key)
    return {key: pod_state(dict(body))}


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event("pods", labels=OURS, when=_deleted)
async def on_pod_deleted(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A deleted pod leaves the index without calling ``pod_index``: its job is reconciled from here."""
    state = state_of(memo)
    state.indexed = True
    trainjobs.pod_changed(state, job_key(namespace, labels[podspec.LABEL_JOB]))
