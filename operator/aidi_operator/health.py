"""The liveness probe: ``GET http://<pod>:<--liveness-port>/healthz`` answers while the operator runs."""

from __future__ import annotations

from typing import Any

import kopf

from aidi_operator.startup import state_of


@kopf.on.probe(id="trainjobs")
def trainjobs_known(memo: kopf.Memo, **_: Any) -> int:
    state = state_of(memo)
    return len(state.jobs) if state.jobs is not None else 0


@kopf.on.probe(id="resync")
def resync_alive(memo: kopf.Memo, **_: Any) -> bool:
    """False (and the pod restarted by its liveness probe) if the periodic resync has died."""
    tasks = state_of(memo).tasks
    if tasks and all(task.done() for task in tasks):
        raise kopf.PermanentError("the periodic resync task has stopped")
    return True
