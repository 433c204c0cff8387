"""The TrainJob resource: the single source of truth for the job contract.

Every other form is derived from these models: the CRD's ``openAPIV3Schema`` (``aidi.api.crd``), the
AIDI ``train_job.yaml`` converter (``aidi.api.aidi_form``), the operator's pod builders and the CLIs.
Field names are the CR's camelCase names; Python code uses the snake_case attribute names.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "aidi.io"
VERSION = "v1alpha1"
API_VERSION: Final = "aidi.io/v1alpha1"  # f"{GROUP}/{VERSION}", spelt out so that its type is the literal
KIND: Final = "TrainJob"
PLURAL = "trainjobs"
SINGULAR = "trainjob"
SHORT_NAMES = ["tj"]
CRD_NAME = f"{PLURAL}.{GROUP}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
DATASET_VERSION = r"^(latest|v[1-9][0-9]*)$"
DATASET_TYPES = ("trainset", "valset", "testset", "dataset", "rec")
DatasetType = Literal["trainset", "valset", "testset", "dataset", "rec"]
MAX_GPUS_PER_WORKER = 16
MAX_WORKERS = 256
MAX_JOB_NAME = 53

# A Kubernetes quantity ("4", "16Gi", 2): the CRD marks it x-kubernetes-int-or-string.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The dict as it goes to the API server: camelCase keys, unset and empty fields left out."""
        return _prune_dict(self.model_dump(by_alias=True, exclude_none=True, mode="json"))


def _prune_dict(value: dict[str, Any]) -> dict[str, Any]:
    pruned: dict[str, Any] = _prune_empty(value)
    return pruned


def _prune_empty(value: Any) -> Any:
    """Drop empty maps and lists so that manifests show what was set, not every default container."""
    if isinstance(value, dict):
        pruned = {k: _prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- spec


class SecretKeyRef(_Model):
    """A key in a Secret of the job's namespace."""

    name: str = Field(min_length=1, description="Name of the Secret in the job's namespace.")
    key: str = Field(default="password", min_length=1, description="Key inside the Secret.")


class CodePackage(_Model):
    """The job's code (AIDI's UPLOAD_DIR), packed, encrypted and stored in the dataspace."""

    uri: str = Field(
        min_length=1,
        description="Where the encrypted package lives, e.g. s3://aidi/codepkgs/<ns>/<job>/<sha256>.tar.gz.enc",
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the encrypted package."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding the package password (AIDI's JOB_PASSWD)."
    )


class WorkerRange(_Model):
    """How many worker pods the job runs (AIDI's WORKER_MIN_NUM / WORKER_MAX_NUM)."""

    min: int = Field(default=1, ge=1, le=MAX_WORKERS, description="Fewest workers the job can run with.")
    max: int = Field(default=1, ge=1, le=MAX_WORKERS, description="Workers started when resources allow.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> WorkerRange:
        if self.min > self.max:
            raise ValueError(f"workers.min ({self.min}) is greater than workers.max ({self.max})")
        return self


class DatasetInput(_Model):
    """A dataspace dataset mounted at /data_space/input/<name>/<type>/<version>/."""

    name: str = Field(pattern=DATASET_NAME, description="Dataset name, e.g. adasmini_4pe.")
    type: DatasetType = Field(default="trainset", description="Dataset type.")
    version: str = Field(
        default="latest", pattern=DATASET_VERSION, description="A version such as v3, or latest."
    )


class DatasetOutput(_Model):
    """Where the job's outputs go: a new version of this dataspace dataset when the job ends."""

    name: str = Field(pattern=DATASET_NAME, description="Output dataset name, e.g. adasmini_4pe_models.")
    type: DatasetType = Field(default="dataset", description="Output dataset type.")


class DataSpace(_Model):
    """Dataspace inputs fetched before the job starts, and the output synced after it."""

    inputs: list[DatasetInput] = Field(default_factory=list, description="Datasets fetched into the pods.")
    output: DatasetOutput | None = Field(default=None, description="Dataset that receives the outputs.")


class EnvVar(_Model):
    """An environment variable of the main container."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Variable name.")
    value: str = Field(default="", description="Variable value.")


class Toleration(_Model):
    """A Kubernetes toleration, copied to every pod of the job."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(_Model):
    """A reference to an object in the job's namespace, by name."""

    name: str = Field(min_length=1)


class Resources(_Model):
    """Extra CPU/memory requests and limits per worker. GPUs come from gpusPerWorker."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class TrainJobSpec(_Model):
    """What the user asks for. Everything AIDI's train_job.yaml carries, plus Kubernetes run policy."""

    project_id: str | None = Field(default=None, description="AIDI project, e.g. PDT2021005 (PROJECT_ID).")
    image: str | None = Field(
        default=None, description="Job image (DOCKER_IMAGE); the operator's default job image when unset."
    )
    command: list[str] = Field(
        min_length=1,
        description='Main container command; RUN_SCRIPTS becomes ["bash", "-c", RUN_SCRIPTS].',
    )
    code_package: CodePackage | None = Field(
        default=None, description="Encrypted code package unpacked at $WORKING_PATH."
    )
    workers: WorkerRange = Field(default_factory=WorkerRange, description="Worker pods (min/max).")
    gpus_per_worker: int = Field(
        default=1, ge=0, le=MAX_GPUS_PER_WORKER, description="nvidia.com/gpu per worker (GPU_PER_WORKER)."
    )
    parameter_servers: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WORKERS,
        description="MXNet parameter servers for multi-worker jobs; defaults to the worker count.",
    )
    priority: int = Field(
        default=3, ge=1, le=5, description="1 (lowest) to 5 (highest): PriorityClass aidi-priority-N."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Run-time limit from the first start (WALL_TIME x 60)."
    )
    data_space: DataSpace = Field(default_factory=DataSpace, description="Dataspace inputs and output.")
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Gang restarts allowed before the job is Failed."
    )
    restart_policy: Literal["OnFailure", "ExitCode", "Never"] = Field(
        default="OnFailure",
        description=(
            "OnFailure restarts the whole gang on any worker failure; ExitCode only when the exit code "
            "is 128 or above (killed, e.g. preempted or OOM); Never fails the job at once."
        ),
    )
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        default="Running",
        description="Pods removed when the job finishes: All, only the still Running ones, or None.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished job (and its children) after this many seconds."
    )
    suspend: bool = Field(default=False, description="True deletes the pods; False (re)creates them.")
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue: sets the kueue.x-k8s.io/queue-name label."
    )
    scheduler_name: str | None = Field(
        default=None, description="Pod scheduler, e.g. volcano for gang scheduling."
    )
    min_available: int | None = Field(
        default=None, ge=1, description="Gang size for the PodGroup; all pods of the job when unset."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels every pod requires.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of every pod.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling a private job image."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment of the main container.")
    resources: Resources = Field(default_factory=Resources, description="CPU/memory per worker.")

    @model_validator(mode="after")
    def _gang_fits(self) -> TrainJobSpec:
        if self.min_available is not None and self.min_available > self.workers.max + self.server_count():
            raise ValueError(
                f"minAvailable ({self.min_available}) exceeds the job's pod count "
                f"({self.workers.max + self.server_count()})"
            )
        return self

    def server_count(self) -> int:
        """Parameter-server pods (servers + scheduler) that a multi-worker job adds."""
        if self.workers.max <= 1:
            return 0
        return (self.parameter_servers or self.workers.max) + 1


# ------------------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
ConditionType = Literal["Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class ReplicaCounts(_Model):
    """Pods of one role by state."""

    pending: int = 0
    active: int = 0
    succeeded: int = 0
    failed: int = 0


class FailureRecord(_Model):
    """What a failed pod left behind, kept after the pod is gone."""

    pod: str
    reason: str = ""
    exit_code: int | None = None
    message: str = ""
    log_tail: str = ""


class Outputs(_Model):
    """Where the job's outputs landed."""

    dataset: str | None = None
    type: str | None = None
    version: str | None = None
    uri: str | None = None


class TrainProgress(_Model):
    """Where the training stands, from the trainer's progress records (docs/progress.md); refreshed by the
    runner while the job runs, at most every ``--progress-seconds``. Strings as users read them."""

    step: str | None = Field(default=None, description='the quantization step, e.g. "2/4 fusion-bn-c1"')
    epoch: str | None = Field(default=None, description='epoch of the step, e.g. "3/10"')
    iteration: str | None = Field(default=None, description='iteration of the step, e.g. "120/400"')
    samples_per_second: float | None = None
    loss: float | None = Field(default=None, description="the summed training loss of the latest interval")
    eta: str | None = Field(default=None, description='time left for the whole job, "H:MM:SS"')
    step_eta: str | None = Field(default=None, description='time left for the current step, "H:MM:SS"')
    updated: str | None = Field(default=None, description="when the trainer wrote the figures")


class TrainJobStatus(_Model):
    """What the operator observed. Written only through the status subresource."""

    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    workers: ReplicaCounts = Field(default_factory=ReplicaCounts)
    servers: ReplicaCounts = Field(default_factory=ReplicaCounts)
    scheduler: ReplicaCounts = Field(default_factory=ReplicaCounts)
    restarts: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    last_failure: FailureRecord | None = None
    outputs: Outputs | None = None
    progress: TrainProgress | None = None
    observed_generation: int | None = None


# --------------------------------------------------------------------------------------- the object


class ObjectMeta(_Model):
    """The part of metadata a TrainJob manifest sets; the API server adds the rest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    # 53, not 63: pod names append "-worker-<i>" / "-scheduler" and must stay DNS labels.
    name: str = Field(pattern=DNS1123_LABEL, max_length=MAX_JOB_NAME)
    namespace: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainJob(_Model):
    """A TrainJob custom resource."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["aidi.io/v1alpha1"] = API_VERSION
    kind: Literal["TrainJob"] = KIND
    metadata: ObjectMeta
    spec: TrainJobSpec
    status: TrainJobStatus | None = None

    def to_wire(self) -> dict[str, Any]:
        """The manifest as ``kubectl apply`` would send it (no status, no empty maps)."""
        return _prune_dict(self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status"}))
