"""Where a job's outputs came from: the job record a job writes into its outputs, and the lineage a model keeps.

``aidi fetch-data --record /data_space/output/aidi-job.json`` (worker 0's fetch step) writes, once it has
resolved and downloaded the inputs::

    {"format": "aidi.job/v1",
     "job": {"name": "adasmini-4pe", "namespace": "team-a", "uid": "…", "image": "aidi/jobimage:1.0",
             "code_sha256": "…64 hex…"},
     "inputs": [{"name": "adasmini_4pe", "type": "trainset", "requested": "latest", "version": "v3"}],
     "fetched": "2026-12-04T21:00:00Z"}

so the record names the exact versions the job really trained on, even when it asked for ``latest``. It
travels with the outputs (the sync uploads it as part of the output dataset's version), and ``hitc model
append`` copies it, with that output version, into the model's ``_model.json`` as ``lineage``::

    {"job": {...}, "datasets": [{"name", "type", "version", "requested"}], "output": {"name", "type", "version"}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aidi.errors import UsageError

JOB_RECORD = "aidi-job.json"
JOB_FORMAT = "aidi.job/v1"

# The pod environment the record's job part comes from (aidi.jobs.podspec sets these).
ENV_FIELDS = {"name": "JOB_NAME", "namespace": "AIDI_JOB_NAMESPACE", "uid": "AIDI_JOB_UID",
              "image": "AIDI_JOB_IMAGE", "code_sha256": "AIDI_CODE_SHA256"}


def job_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    return {key: env.get(var) or None for key, var in ENV_FIELDS.items()}


def job_record(inputs: list[dict[str, Any]], fetched: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"format": JOB_FORMAT, "job": job_from_env(env),
            "inputs": [{k: d.get(k) for k in ("name", "type", "requested", "version")} for d in inputs],
            "fetched": fetched}


def write_job_record(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_job_record(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"{where} is not JSON; it is not a job record ({JOB_FORMAT})") from None
    if not isinstance(data, dict) or data.get("format") != JOB_FORMAT or not isinstance(data.get("inputs"), list):
        raise UsageError(f"{where} is not a job record ({JOB_FORMAT})")
    return data


def read_job_record(folder: Path) -> dict[str, Any] | None:
    """The job record in ``folder`` (a job's outputs), None when there is none."""
    path = folder / JOB_RECORD if folder.is_dir() else folder.parent / JOB_RECORD
    if not path.is_file():
        return None
    return parse_job_record(path.read_bytes(), str(path))


def lineage_of(record: dict[str, Any] | None, output: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``lineage`` a model version keeps: its job, the dataset versions it trained on, the output it came from."""
    if record is None and output is None:
        return None
    record = record or {}
    return {"job": dict(record.get("job") or {}),
            "datasets": [{k: d.get(k) for k in ("name", "type", "version", "requested")}
                         for d in record.get("inputs") or []],
            "output": output}


def uses_dataset(lineage: dict[str, Any] | None, name: str, type_: str, version: str) -> bool:
    """Whether a model with this lineage was trained on (or made from) ``name/type version``."""
    if not lineage:
        return False
    used = [*(lineage.get("datasets") or []), *([lineage["output"]] if lineage.get("output") else [])]
    return any(d.get("name") == name and d.get("type") == type_ and d.get("version") == version for d in used)
