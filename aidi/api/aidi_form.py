"""The AIDI ``train_job.yaml`` form (upper-case REQUIRED / OPTIONAL sections) and its conversion to a TrainJob.

Field mapping (documented in docs/trainjob.md):

    REQUIRED.JOB_NAME        -> metadata.name (a DNS-1123 label)
    REQUIRED.JOB_PASSWD      -> the code package password; stored in a Secret, never in the CR
    REQUIRED.UPLOAD_DIR      -> packed, encrypted and uploaded at submit -> spec.codePackage
    REQUIRED.PROJECT_ID      -> spec.projectId and label aidi.io/project
    REQUIRED.WORKER_MIN_NUM  -> spec.workers.min
    REQUIRED.WORKER_MAX_NUM  -> spec.workers.max
    REQUIRED.GPU_PER_WORKER  -> spec.gpusPerWorker
    REQUIRED.RUN_SCRIPTS     -> spec.command: ["bash", "-c", RUN_SCRIPTS]
    OPTIONAL.PRIORITY        -> spec.priority (1-5, 5 highest)
    OPTIONAL.DOCKER_IMAGE    -> spec.image
    OPTIONAL.WALL_TIME       -> spec.activeDeadlineSeconds (minutes x 60)
    OPTIONAL.DATA_SPACE      -> spec.dataSpace (INPUT: a name, "name:v3", or a list of them)
    OPTIONAL.CHECKPOINT_SYNC -> spec.checkpoints.enabled (default true)
    OPTIONAL.CHECKPOINT_MINUTES -> spec.checkpoints.intervalSeconds (minutes x 60)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from aidi.api import trainjob as tj
from aidi.api.errors import FieldError, dns1035_label, excerpt, from_pydantic

PROJECT_LABEL = "aidi.io/project"
UPLOAD_DIR_ANNOTATION = "aidi.io/upload-dir"
CODE_SECRET_SUFFIX = "-code"
LABEL_VALUE = tj.LABEL_VALUE


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=False)


class AidiRequired(_Section):
    JOB_NAME: str = Field(description="the job's name, e.g. adasmini-4pe (lower case, digits and '-')")
    JOB_PASSWD: SecretStr = Field(description="the password that encrypts the code package")

    @field_validator("JOB_PASSWD")
    @classmethod
    def _password_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("the password is empty; set JOB_PASSWD to the password that encrypts the code package")
        return value

    UPLOAD_DIR: str = Field(min_length=1, description="the local code folder, e.g. ./auto_matrix_development_toolkit")
    PROJECT_ID: str = Field(pattern=LABEL_VALUE, max_length=tj.MAX_LABEL_VALUE,
                            description="your AIDI project id, e.g. PDT2021005 (it becomes a label: at most 63 "
                                        "letters, digits, '-', '_' or '.')")
    WORKER_MIN_NUM: int = Field(ge=1, le=tj.MAX_WORKERS, strict=True,
                                description=f"an integer from 1 to {tj.MAX_WORKERS}")
    WORKER_MAX_NUM: int = Field(ge=1, le=tj.MAX_WORKERS, strict=True,
                                description=f"an integer from 1 to {tj.MAX_WORKERS}")
    GPU_PER_WORKER: int = Field(
        ge=0, le=tj.MAX_GPUS_PER_WORKER, strict=True, description=f"an integer from 0 to {tj.MAX_GPUS_PER_WORKER}"
    )
    RUN_SCRIPTS: str = Field(min_length=1, description='the start script, e.g. "${WORKING_PATH}/run.sh"')


class AidiDataSpace(_Section):
    DATA_TYPE: tj.DatasetType = Field(default="trainset", description="one of " + ", ".join(tj.DATASET_TYPES))
    INPUT: str | list[str] | None = Field(
        default=None, description=f'a dataset name, "name:v3", or a list of at most {tj.MAX_INPUTS} of them'
    )
    OUTPUT: str | None = Field(default=None, pattern=tj.DATASET_NAME, description="the output dataset's name")


class AidiOptional(_Section):
    PRIORITY: int = Field(default=3, ge=1, le=5, strict=True,
                          description="an integer from 1 (lowest) to 5 (highest)")
    DOCKER_IMAGE: str | None = Field(
        default=None, pattern=tj.IMAGE_REFERENCE, max_length=512,
        description="an image reference such as aidi/jobimage:1.0 or registry.example.com:5000/team/image:tag "
                    "(path in lower case, no spaces)")
    WALL_TIME: int | None = Field(default=None, ge=1, le=tj.MAX_WALL_TIME_MINUTES, strict=True,
                                  description=f"the run-time limit in minutes, at most {tj.MAX_WALL_TIME_MINUTES} "
                                              "(90 days)")
    DATA_SPACE: AidiDataSpace | None = Field(default=None, description="DATA_TYPE, INPUT and OUTPUT")
    CHECKPOINT_SYNC: bool = Field(default=True, description="true or false: copy checkpoints to the dataspace")
    CHECKPOINT_MINUTES: int | None = Field(
        default=None, ge=0, le=1440, description="least minutes between two checkpoint copies (0: every epoch)"
    )


class AidiJob(_Section):
    REQUIRED: AidiRequired = Field(description="JOB_NAME, JOB_PASSWD, UPLOAD_DIR, ... (see docs/trainjob.md)")
    OPTIONAL: AidiOptional = Field(default_factory=AidiOptional, description="PRIORITY, DOCKER_IMAGE, ...")


def is_aidi_form(doc: dict[str, Any]) -> bool:
    """True for a train_job.yaml (REQUIRED / OPTIONAL sections) rather than a CR."""
    return "REQUIRED" in doc or "OPTIONAL" in doc


def _cross_field_errors(doc: dict[str, Any]) -> list[FieldError]:
    """Checks that need two fields or a suggestion; run on the raw dict so they add to type errors."""
    errors: list[FieldError] = []
    raw = doc.get("REQUIRED")
    required: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = required.get("JOB_NAME")
    if isinstance(name, str):
        fixed = dns1035_label(name, tj.MAX_JOB_NAME)
        if name != fixed:
            errors.append(FieldError(
                "REQUIRED.JOB_NAME",
                f"{excerpt(name)} is not a valid job name (lower-case letters, digits and '-', at most "
                f"{tj.MAX_JOB_NAME} characters, starting with a letter and ending with a letter or digit: it names "
                f"the pods, their hostnames and a Service); use JOB_NAME: \"{fixed}\"",
            ))
    low, high = required.get("WORKER_MIN_NUM"), required.get("WORKER_MAX_NUM")
    if type(low) is int and type(high) is int and low > high:
        errors.append(FieldError(
            "REQUIRED.WORKER_MIN_NUM",
            f"WORKER_MIN_NUM ({low}) is greater than WORKER_MAX_NUM ({high}); "
            f"set WORKER_MIN_NUM <= WORKER_MAX_NUM",
        ))
    inputs = (((doc.get("OPTIONAL") or {}).get("DATA_SPACE") or {}) if isinstance(doc.get("OPTIONAL"), dict)
              else {})
    refs = _input_refs(inputs.get("INPUT")) if isinstance(inputs, dict) else []
    if len(refs) > tj.MAX_INPUTS:
        errors.append(FieldError("OPTIONAL.DATA_SPACE.INPUT", f"{len(refs)} datasets; at most {tj.MAX_INPUTS} "
                                 "per job — pack related data into fewer datasets"))
    elif isinstance(inputs, dict):
        for i, ref in enumerate(refs):
            name, _, version = ref.partition(":")
            path = "OPTIONAL.DATA_SPACE.INPUT" + (f"[{i}]" if isinstance(inputs.get("INPUT"), list) else "")
            try:
                tj.DatasetInput(name=name, version=version or "latest")
            except ValidationError:
                errors.append(FieldError(
                    path, f"{excerpt(ref)} is not a dataset reference; write NAME or NAME:vN (e.g. adasmini_4pe:v2)"
                ))
    return errors


def _input_refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(part) for part in value]
    return []


def parse(doc: dict[str, Any]) -> tuple[AidiJob | None, list[FieldError]]:
    """Validate a train_job.yaml document. Returns the parsed job (None if invalid) and every error."""
    errors: list[FieldError] = []
    job: AidiJob | None = None
    try:
        job = AidiJob.model_validate(doc)
    except ValidationError as exc:
        errors.extend(from_pydantic(exc, AidiJob))
    errors.extend(_cross_field_errors(doc))
    return (job if not errors else None), errors


def to_trainjob(job: AidiJob) -> tj.TrainJob:
    """The TrainJob custom resource this train_job.yaml describes (without the code package yet)."""
    req, opt = job.REQUIRED, job.OPTIONAL
    data_space = tj.DataSpace()
    if opt.DATA_SPACE is not None:
        inputs = []
        for ref in _input_refs(opt.DATA_SPACE.INPUT):
            name, _, version = ref.partition(":")
            inputs.append(tj.DatasetInput(name=name, type=opt.DATA_SPACE.DATA_TYPE, version=version or "latest"))
        output = tj.DatasetOutput(name=opt.DATA_SPACE.OUTPUT) if opt.DATA_SPACE.OUTPUT else None
        data_space = tj.DataSpace(inputs=inputs, output=output)
    return tj.TrainJob(
        metadata=tj.ObjectMeta(
            name=req.JOB_NAME,
            labels={PROJECT_LABEL: req.PROJECT_ID},
            annotations={UPLOAD_DIR_ANNOTATION: req.UPLOAD_DIR},
        ),
        spec=tj.TrainJobSpec(
            project_id=req.PROJECT_ID,
            image=opt.DOCKER_IMAGE,
            command=["bash", "-c", req.RUN_SCRIPTS],
            workers=tj.WorkerRange(min=req.WORKER_MIN_NUM, max=req.WORKER_MAX_NUM),
            gpus_per_worker=req.GPU_PER_WORKER,
            priority=opt.PRIORITY,
            active_deadline_seconds=opt.WALL_TIME * 60 if opt.WALL_TIME else None,
            data_space=data_space,
            checkpoints=_checkpoints(opt),
        ),
    )


def _checkpoints(opt: AidiOptional) -> tj.CheckpointSync:
    sync = tj.CheckpointSync(enabled=opt.CHECKPOINT_SYNC)
    if opt.CHECKPOINT_MINUTES is not None:
        sync.interval_seconds = opt.CHECKPOINT_MINUTES * 60
    return sync


def code_secret_name(job_name: str) -> str:
    """The Secret that holds a job's code-package password."""
    return f"{job_name}{CODE_SECRET_SUFFIX}"
