"""The TrainJob resource: the single source of truth for the job contract.

Every other form is derived from these models: the CRD's ``openAPIV3Schema`` (``aidi.api.crd``), the
AIDI ``train_job.yaml`` converter (``aidi.api.aidi_form``), the operator's pod builders and the CLIs.
Field names are the CR's camelCase names; Python code uses the snake_case attribute names.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
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
# The job's name also names its headless Service and is the pods' hostname prefix: a Service name must
# start with a letter (DNS-1035), so the job's name must too.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# A container image reference as the kubelet and registries parse it: [registry[:port]/]path[:tag][@digest],
# path components in lower case.
IMAGE_REFERENCE = (r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
                   r"(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
                   r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
QUANTITY = r"^[+]?[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
RESOURCE_NAME = LABEL_KEY
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
CODE_PACKAGE_URI = r"^(s3://[^/\s]+/\S+|file:///\S+)$"
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
DATASET_VERSION = r"^(latest|v[1-9][0-9]*)$"
DATASET_TYPES = ("trainset", "valset", "testset", "dataset", "rec")
DatasetType = Literal["trainset", "valset", "testset", "dataset", "rec"]
MAX_GPUS_PER_WORKER = 16
MAX_WORKERS = 256
# 52: the longest pod name is "<job>-worker-255" (or "-server-255"), and it is also the pod's hostname,
# which is a DNS label of at most 63 characters.
MAX_JOB_NAME = 52
MAX_LABEL_VALUE = 63
MAX_INPUTS = 64  # each is an argument of the fetch-data command line
MAX_MAP_ENTRIES = 64
MAX_WALL_TIME_MINUTES = 90 * 24 * 60  # 90 days: well inside every int64 the kubelet multiplies it into
MAX_DEADLINE_SECONDS = MAX_WALL_TIME_MINUTES * 60
MAX_TTL_SECONDS = 365 * 24 * 3600

LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=MAX_LABEL_VALUE)]
LABEL_HINT = ("label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
              "or digit")

# A Kubernetes quantity ("4", "16Gi", "500m", 2): the CRD marks it x-kubernetes-int-or-string.
Quantity = Annotated[
    Annotated[int, Field(strict=True, ge=0)] | Annotated[str, StringConstraints(pattern=QUANTITY, max_length=32)],
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

    name: str = Field(pattern=DNS1123_SUBDOMAIN, max_length=253,
                      description="Name of the Secret in the job's namespace (lower case, digits, '-', '.').")
    key: str = Field(default="password", pattern=SECRET_KEY, max_length=253,
                     description="Key inside the Secret (letters, digits, '-', '_', '.').")


class CodePackage(_Model):
    """The job's code (AIDI's UPLOAD_DIR), packed, encrypted and stored in the dataspace."""

    uri: str = Field(
        pattern=CODE_PACKAGE_URI, max_length=2048,
        description="Where the encrypted package lives: s3://BUCKET/KEY or file:///PATH, e.g. "
                    "s3://aidi/codepkgs/<ns>/<job>/<sha256>.tar.gz.enc",
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the encrypted package."
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding the package password (AIDI's JOB_PASSWD)."
    )


class WorkerRange(_Model):
    """How many worker pods the job runs (AIDI's WORKER_MIN_NUM / WORKER_MAX_NUM)."""

    min: int = Field(default=1, ge=1, le=MAX_WORKERS, strict=True, description="Fewest workers the job can run with.")
    max: int = Field(default=1, ge=1, le=MAX_WORKERS, strict=True, description="Workers started when resources allow.")

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

    inputs: list[DatasetInput] = Field(default_factory=list, max_length=MAX_INPUTS,
                                       description=f"Datasets fetched into the pods (at most {MAX_INPUTS}).")
    output: DatasetOutput | None = Field(default=None, description="Dataset that receives the outputs.")


class CheckpointSync(_Model):
    """The chief worker's checkpoints copied to the dataspace while the job runs, restored when the gang restarts."""

    enabled: bool = Field(
        default=True, description="Copy checkpoints to the dataspace (needs dataSpace.output); false turns it off."
    )
    interval_seconds: int = Field(
        default=600, ge=0, le=86400,
        description="Least time between two copies; each new checkpoint (epoch) is copied once this has passed. "
                    "0 copies every epoch.",
    )
    max_bytes_per_second: int | None = Field(
        default=None, ge=1024, description="Upload rate limit of the copies (bytes/s); unlimited when unset."
    )


class EnvVar(_Model):
    """An environment variable of the main container."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256, description="Variable name.")
    value: str = Field(default="", max_length=32768, description="Variable value.")


class Toleration(_Model):
    """A Kubernetes toleration, copied to every pod of the job."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "message": "a toleration with operator Exists takes no value; remove value, or use operator Equal"}]})

    key: str | None = Field(default=None, pattern=LABEL_KEY, max_length=317, description="A node taint's key.")
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, pattern=r"^(|[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$",
                              max_length=MAX_LABEL_VALUE, description=LABEL_HINT)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=MAX_TTL_SECONDS, strict=True)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value; remove value, or use operator Equal")
        return self


class LocalObjectReference(_Model):
    """A reference to an object in the job's namespace, by name."""

    name: str = Field(pattern=DNS1123_SUBDOMAIN, max_length=253,
                      description="An object name: lower case, digits, '-' and '.'.")


class Resources(_Model):
    """Extra CPU/memory requests and limits per worker. GPUs come from gpusPerWorker."""

    requests: dict[Annotated[str, StringConstraints(pattern=RESOURCE_NAME, max_length=317)], Quantity] = Field(
        default_factory=dict, max_length=16, description='Requests per worker, e.g. {cpu: "8", memory: 64Gi}.')
    limits: dict[Annotated[str, StringConstraints(pattern=RESOURCE_NAME, max_length=317)], Quantity] = Field(
        default_factory=dict, max_length=16, description="Limits per worker.")


class TrainJobSpec(_Model):
    """What the user asks for. Everything AIDI's train_job.yaml carries, plus Kubernetes run policy."""

    project_id: str | None = Field(
        default=None, pattern=LABEL_VALUE, max_length=MAX_LABEL_VALUE,
        description="AIDI project, e.g. PDT2021005 (PROJECT_ID); it becomes a label, so " + LABEL_HINT,
    )
    image: str | None = Field(
        default=None, pattern=IMAGE_REFERENCE, max_length=512,
        description="Job image (DOCKER_IMAGE), e.g. registry.example.com:5000/aidi/jobimage:1.0 (path in lower "
                    "case, no spaces); the operator's default job image when unset.",
    )
    command: list[str] = Field(
        min_length=1, max_length=1024,
        description='Main container command; RUN_SCRIPTS becomes ["bash", "-c", RUN_SCRIPTS].',
    )
    code_package: CodePackage | None = Field(
        default=None, description="Encrypted code package unpacked at $WORKING_PATH."
    )
    workers: WorkerRange = Field(default_factory=WorkerRange, description="Worker pods (min/max).")
    gpus_per_worker: int = Field(
        default=1, ge=0, le=MAX_GPUS_PER_WORKER, strict=True,
        description="nvidia.com/gpu per worker (GPU_PER_WORKER).",
    )
    parameter_servers: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        le=MAX_WORKERS,
        description="MXNet parameter servers for multi-worker jobs; defaults to the worker count.",
    )
    priority: int = Field(
        default=3, ge=1, le=5, strict=True, description="1 (lowest) to 5 (highest): PriorityClass aidi-priority-N."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=MAX_DEADLINE_SECONDS, strict=True,
        description=f"Run-time limit from the first start (WALL_TIME x 60), at most {MAX_DEADLINE_SECONDS} (90 days).",
    )
    data_space: DataSpace = Field(default_factory=DataSpace, description="Dataspace inputs and output.")
    checkpoints: CheckpointSync = Field(
        default_factory=CheckpointSync,
        description="Checkpoints kept in the dataspace while the job runs, so a restarted gang resumes.",
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=100, strict=True, description="Gang restarts allowed before the job is Failed."
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
        default=None, ge=0, le=MAX_TTL_SECONDS, strict=True,
        description="Delete the finished job (and its children) after this many seconds (at most a year)."
    )
    suspend: bool = Field(default=False, description="True deletes the pods; False (re)creates them.")
    queue_name: str | None = Field(
        default=None, pattern=LABEL_VALUE, max_length=MAX_LABEL_VALUE,
        description="Kueue LocalQueue: sets the kueue.x-k8s.io/queue-name label, so " + LABEL_HINT,
    )
    scheduler_name: str | None = Field(
        default=None, pattern=DNS1123_SUBDOMAIN, max_length=253,
        description="Pod scheduler, e.g. volcano for gang scheduling.",
    )
    min_available: int | None = Field(
        default=None, ge=1, strict=True, description="Gang size for the PodGroup; all pods of the job when unset."
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAX_MAP_ENTRIES,
        description="Node labels every pod requires: keys like example.com/gpu-type, " + LABEL_HINT,
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_MAP_ENTRIES,
                                          description="Tolerations of every pod.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=MAX_MAP_ENTRIES, description="Secrets for pulling a private job image."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=256,
                              description="Extra environment of the main container.")
    resources: Resources = Field(
        default_factory=Resources,
        description="CPU/memory per worker; by default requests per GPU from the cluster's settings.",
    )
    run_as_root: bool | None = Field(
        default=None, strict=True,
        description="Run the main container as root, for a job image that needs it (the namespace's Pod "
                    "Security level must allow it: baseline, not restricted); unset: the cluster's default.",
    )
    service_account_token: bool = Field(
        default=False, strict=True,
        description="Mount the namespace's default ServiceAccount token in the pods (off: jobs do not need it).",
    )

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


class ResumeRecord(_Model):
    """The checkpoint the current gang was restored from."""

    checkpoint: int
    attempt: int
    summary: str = ""
    message: str = ""


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
    resumed: ResumeRecord | None = None
    outputs: Outputs | None = None
    progress: TrainProgress | None = None
    observed_generation: int | None = None


# --------------------------------------------------------------------------------------- the object


class ObjectMeta(_Model):
    """The part of metadata a TrainJob manifest sets; the API server adds the rest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    # 52, not 63: pod names append "-worker-<i>" / "-scheduler" and must stay DNS labels (they are the
    # pods' hostnames); a letter first because the name is also the headless Service's.
    name: str = Field(pattern=DNS1035_LABEL, max_length=MAX_JOB_NAME,
                      description=f"lower-case letters, digits and '-', starting with a letter, at most {MAX_JOB_NAME}")
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
