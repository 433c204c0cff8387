"""Training progress in ``status.progress``: worker 0's log tail, read when a running job's summary is due.

Cost at scale is the design constraint (docs/progress.md, "Why the log tail"): one small log read per running
job per ``--progress-seconds`` (default 120 s, 0 turns it off), each job on its own jittered schedule so that
thousands of jobs started together do not read together, at most ``PARALLEL_READS`` reads in flight, and a
status write only when the summary changed. Jobs that are not running cost one dictionary look-up per tick.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi.jobs import progress as records
from aidi_operator.kube import core_path
from aidi_operator.pods import JobKey
from aidi_operator.startup import OperatorState

log = logging.getLogger(__name__)

# The handlers module's own bookkeeping, passed in (it imports this module): the indexed job, and the one
# status write every change goes through (it keeps the operator's copy of what it wrote).
IndexedJob = Callable[[OperatorState, JobKey], "dict[str, Any] | None"]
WriteStatus = Callable[[OperatorState, JobKey, "dict[str, Any]", "dict[str, Any]", tj.TrainJobStatus], Awaitable[None]]

PARALLEL_READS = 4
TAIL_LINES = 40          # the trainer logs two lines per interval: ~20 intervals, whatever else it logs
LIMIT_BYTES = 256 * 1024  # a runaway line never makes a read expensive
JITTER = 0.1             # each job's next read is interval × (1 ± JITTER) away


async def progress_loop(state: OperatorState, indexed_job: IndexedJob, write_status: WriteStatus) -> None:
    interval = state.settings.progress_seconds
    if interval <= 0:
        return
    due: dict[JobKey, float] = {}
    gate = asyncio.Semaphore(PARALLEL_READS)
    tick = min(5.0, interval / 4)
    pending: set[asyncio.Task[None]] = set()
    try:
        await _schedule(state, interval, tick, due, gate, pending, indexed_job, write_status)
    finally:  # the operator stops: no read outlives its API client
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _schedule(state: OperatorState, interval: float, tick: float, due: dict[JobKey, float],
                    gate: asyncio.Semaphore, pending: set[asyncio.Task[None]], indexed_job: IndexedJob,
                    write_status: WriteStatus) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(tick)
        now = loop.time()
        running = set()
        for key in list(state.jobs or {}):
            if not _worker0_running(state, key):
                continue
            running.add(key)
            when = due.get(key)
            if when is None:  # first seen running: a random point of the first interval spreads the reads
                due[key] = now + random.uniform(0, interval)
            elif when <= now:
                due[key] = now + interval * random.uniform(1 - JITTER, 1 + JITTER)
                task = asyncio.create_task(_refresh_gated(state, key, gate, indexed_job, write_status))
                pending.add(task)
                task.add_done_callback(pending.discard)
        for key in [k for k in due if k not in running]:
            del due[key]


async def _refresh_gated(state: OperatorState, key: JobKey, gate: asyncio.Semaphore, indexed_job: IndexedJob,
                         write_status: WriteStatus) -> None:
    async with gate:
        try:
            await refresh(state, key, indexed_job, write_status)
        except kopf.TemporaryError as exc:  # the API server busy or away: the next interval tries again
            log.warning(f"{key[0]}/{key[1]}: training progress not read: {exc}")
        except Exception:  # progress is a nicety: never let it stop the loop or the reconciles
            log.exception(f"{key[0]}/{key[1]}: reading training progress failed")


_WORKER0 = podspec.Member("worker", 0)


def _worker0_running(state: OperatorState, key: JobKey) -> bool:
    pods = state.pods_of(key)
    if not pods:
        return False
    worker0 = _WORKER0.pod_name(key[1])
    return any(p.name == worker0 and p.phase == "Running" and not p.deleting for p in pods)


async def refresh(state: OperatorState, key: JobKey, indexed_job: IndexedJob, write_status: WriteStatus) -> bool:
    """Read worker 0's log tail and write ``status.progress`` if it says something new; True when written."""
    if state.api is None:
        return False
    namespace, name = key
    pod = podspec.Member("worker", 0).pod_name(name)
    text = await state.api.text(core_path(namespace, "pods", pod, "log"),
                                {"container": podspec.MAIN_CONTAINER, "tailLines": str(TAIL_LINES),
                                 "limitBytes": str(LIMIT_BYTES)})
    found = records.status_from_log(text or "")
    if found is None:
        return False
    async with state.lock(key):
        body = indexed_job(state, key)
        if body is None:
            return False
        uid = body.get("metadata", {}).get("uid")
        cached_uid, cached = state.statuses.get(key, (None, None))
        old = cached if cached is not None and cached_uid == uid else body.get("status") or {}
        if old.get("phase") != "Running":
            return False  # ended meanwhile: the lifecycle wrote the final progress
        status = tj.TrainJobStatus.model_validate(old)
        if status.progress == found:
            return False
        status.progress = found
        await write_status(state, key, body, old, status)
        return True
