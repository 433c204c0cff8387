"""The job status the local runner writes: the operator's phases, conditions, reasons and messages."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Any

STOP_GRACE_SECONDS = 10.0


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: dict[str, Any], type_: str, true: bool, reason: str, message: str) -> None:
    """Upsert a condition as the operator does: lastTransitionTime moves only when its status flips; a
    condition that never held is left out rather than listed as False."""
    value = "True" if true else "False"
    conditions = status.setdefault("conditions", [])
    for cond in conditions:
        if cond["type"] == type_:
            if cond["status"] != value:
                cond["lastTransitionTime"] = now_stamp()
            cond.update(status=value, reason=reason, message=message)
            return
    if true:
        conditions.append({"type": type_, "status": value, "reason": reason, "message": message,
                           "lastTransitionTime": now_stamp()})


def suspended_status(status: dict[str, Any]) -> None:
    """What the operator writes for ``spec.suspend: true`` (pods deleted, the clock reset)."""
    message = "the job is suspended; its pods are deleted until spec.suspend is set to false"
    status.update(phase="Suspended", reason="Suspended", message=message,
                  workers={"pending": 0, "active": 0, "succeeded": 0, "failed": 0})
    status.pop("startTime", None)
    set_condition(status, "Suspended", True, "Suspended", message)
    set_condition(status, "Running", False, "Suspended", message)


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
