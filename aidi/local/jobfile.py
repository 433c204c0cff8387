"""A local job's ``job.json`` read into the lifecycle's models, and the status the lifecycle decides written back.

The local cluster keeps a TrainJob as the API server would (``metadata``, ``spec``, ``status`` in wire form);
what its status becomes is decided by :mod:`aidi.jobs.lifecycle`, as for the operator. These helpers are the
parts of that the client needs without a supervisor: suspending a job whose supervisor cannot, and failing a
job whose supervisor is gone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from aidi.api import trainjob as tj
from aidi.jobs import lifecycle


def job_of(data: dict[str, Any]) -> tj.TrainJob:
    return tj.TrainJob.model_validate({k: v for k, v in data.items() if k != "status"})


def status_of(data: dict[str, Any]) -> tj.TrainJobStatus:
    try:
        return tj.TrainJobStatus.model_validate(data.get("status") or {})
    except ValidationError:
        return tj.TrainJobStatus()  # written in a shape we do not know: start over, as the operator does


def generation_of(data: dict[str, Any]) -> int:
    return int(data["metadata"].get("generation", 1))


def suspend(data: dict[str, Any], now: dt.datetime) -> None:
    """What the lifecycle writes for ``spec.suspend: true`` once the pods are gone."""
    job = job_of(data)
    job.spec.suspend = True
    data["status"] = lifecycle.decide(job, status_of(data), [], now, generation_of(data)).status.to_wire()


def fail(data: dict[str, Any], reason: str, message: str, now: dt.datetime) -> None:
    """The runner could not go on (``RunnerError``, ``RunnerLost``): the job is Failed, saying why."""
    status = lifecycle.runner_failed(status_of(data), reason, message, now)
    status.observed_generation = generation_of(data)
    data["status"] = status.to_wire()
