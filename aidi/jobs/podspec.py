"""TrainJob → the manifests of its children: pods, the headless Service, the Volcano PodGroup.

Pure functions of the typed job (``aidi.api.trainjob.TrainJob``) and a few cluster settings: no API
client, no kopf. The operator creates what these return; the local runner reads the same manifests to
run a job on one machine, so the pod-side command lines below are a contract (docs/architecture.md,
"Inside a job's pods") with ``aidi fetch-code`` / ``fetch-data`` / ``sync-output``.

Pods of one job (W = ``spec.workers.max``):

- ``<job>-worker-<i>`` for i in 0..W-1, each requesting ``spec.gpusPerWorker`` ``nvidia.com/gpu``;
- when W > 1 (MXNet parameter-server training, as Kubeflow's MXJob runs it): ``<job>-scheduler`` and
  ``<job>-server-<i>`` for i in 0..S-1 (S = ``spec.parameterServers`` or W), reachable through the
  headless Service ``<job>`` (``<pod>.<job>`` resolves inside the namespace).

Every pod: init container ``fetch-code`` (when the job has a code package), ``fetch-data`` (workers
with dataspace inputs), main container ``trainer``. Worker 0 of a job with ``spec.dataSpace.output``
also runs ``sync-output``: a plain second container that waits for the trainer's exit code and then
uploads ``/data_space/output`` — see docs/operator.md for why not a native sidecar.

Hardening (docs/operator.md, "Pod hardening"): every pod passes the Pod Security ``restricted`` profile
(non-root, no privilege escalation, every capability dropped, RuntimeDefault seccomp) unless the cluster
or the job asks for root; no ServiceAccount token unless the job asks; a ``sizeLimit`` on every emptyDir;
CPU and memory requests derived from the GPUs asked; and one NetworkPolicy per job
(:func:`build_network_policy`) that lets only the job's own pods in.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from aidi.api import trainjob as tj
from aidi.dataspace.lineage import JOB_RECORD

# Labels and annotations the operator (and `kubectl get pods -l ...`) select on.
LABEL_JOB = "aidi.io/job"
LABEL_ROLE = "aidi.io/role"
LABEL_INDEX = "aidi.io/index"
LABEL_ATTEMPT = "aidi.io/attempt"  # status.restarts when the pod was made: older pods are stale
LABEL_PROJECT = "aidi.io/project"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "aidi-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"
PODGROUP_API_VERSION = "scheduling.volcano.sh/v1beta1"

# Paths inside the pods (docs/architecture.md, "Inside a job's pods").
WORKING_PATH = "/job/code"
INPUT_DIR = "/data_space/input"
OUTPUT_DIR = "/data_space/output"
PASSWORD_DIR = "/var/run/aidi/code"
PASSWORD_FILE = f"{PASSWORD_DIR}/password"
DONE_DIR = "/var/run/aidi/done"
EXIT_CODE_FILE = f"{DONE_DIR}/exit-code"
HEARTBEAT_FILE = f"{DONE_DIR}/alive"
RANK_FILE = f"{DONE_DIR}/rank"  # the trainer's rank (AIDI_RANK_FILE): the chief's pod syncs, whichever it is

MAIN_CONTAINER = "trainer"
FETCH_CODE_CONTAINER = "fetch-code"
FETCH_DATA_CONTAINER = "fetch-data"
SYNC_CONTAINER = "sync-output"
FETCH_CHECKPOINT_CONTAINER = "fetch-checkpoint"
# Where the kubelet takes a container's termination message from (the pod's status carries it): the
# restore step says there which checkpoint it restored, and the lifecycle puts that into the job's status.
TERMINATION_LOG = "/dev/termination-log"
GPU_RESOURCE = "nvidia.com/gpu"
DMLC_PORT = 9091  # Kubeflow MXJob's default port

# The sync container gives up when the trainer's heartbeat is older than this: a container killed as a
# whole (cgroup OOM kill) cannot write its exit code, and the pod must still finish.
HEARTBEAT_SECONDS = 10
# A node that stops answering: Kubernetes evicts its pods after this (its default is 300 s), the lifecycle sees
# the deletion and restarts the gang, which resumes from the last checkpoint instead of its workers waiting on
# a dead parameter server until the wall time (docs/operator.md, "When a pod or a node dies").
NODE_LOST_SECONDS = 60
NODE_LOST_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
HEARTBEAT_STALE_SECONDS = 60

Role = Literal["worker", "server", "scheduler"]


@dataclass(frozen=True)
class PodHardening:
    """The cluster's pod defaults (chart values ``jobDefaults.*``, the operator's ``AIDI_JOB_*`` environment)."""

    # uid/gid the job's containers run as; the job image's own user (jobimage/Dockerfile: 1000).
    run_as_user: int = 1000
    # Cluster-wide: let every job's main container run as root (a job can ask with spec.runAsRoot).
    run_as_root: bool = False
    # Requests of a worker per GPU asked (a 4-GPU worker requests 4x); a worker without GPUs, a
    # parameter server and the scheduler request one share.
    cpu_per_gpu: str = "4"
    memory_per_gpu: str = "16Gi"
    # The fetch and sync steps (download, decrypt, unpack, upload).
    step_cpu: str = "500m"
    step_memory: str = "1Gi"
    # emptyDir sizeLimits: past them the kubelet evicts the pod instead of filling the node's disk.
    code_size_limit: str = "5Gi"  # above the unpacker's 4 GiB default limit
    input_size_limit: str = "500Gi"
    output_size_limit: str = "100Gi"
    shm_size_limit: str = "8Gi"  # memory-backed: counts against the pod's memory

    @classmethod
    def from_env(cls) -> PodHardening:
        """Defaults overridden by ``AIDI_JOB_RUN_AS_USER``, ``AIDI_JOB_RUN_AS_ROOT``, ``AIDI_JOB_CPU_PER_GPU``,
        ``AIDI_JOB_MEMORY_PER_GPU``, ``AIDI_JOB_STEP_CPU``, ``AIDI_JOB_STEP_MEMORY``, ``AIDI_JOB_CODE_SIZE_LIMIT``,
        ``AIDI_JOB_INPUT_SIZE_LIMIT``, ``AIDI_JOB_OUTPUT_SIZE_LIMIT``, ``AIDI_JOB_SHM_SIZE_LIMIT``."""
        base = cls()
        values: dict[str, object] = {}
        for name in cls.__dataclass_fields__:
            raw = os.environ.get(f"AIDI_JOB_{name.upper()}")
            if raw is None or raw == "":
                continue
            default = getattr(base, name)
            if isinstance(default, bool):
                values[name] = raw.strip().lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[name] = int(raw)
            else:
                if not re.match(tj.QUANTITY, raw):
                    raise ValueError(f"AIDI_JOB_{name.upper()}={raw!r} is not a quantity such as 4, 500m or 16Gi")
                values[name] = raw
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PodSettings:
    """What the cluster, not the job, decides: default images, where the dataspace is, pod hardening."""

    job_image: str = "aidi/jobimage:0.1.0"
    fetch_image: str = "aidi/operator:0.1.0"
    dataspace_endpoint: str = ""
    dataspace_bucket: str = "aidi"
    dataspace_secret: str = "aidi-dataspace"
    hardening: PodHardening = field(default_factory=PodHardening)


@dataclass(frozen=True)
class Member:
    """One pod of a job: its role and index within the role."""

    role: Role
    index: int

    def pod_name(self, job: str) -> str:
        return f"{job}-scheduler" if self.role == "scheduler" else f"{job}-{self.role}-{self.index}"

    def short(self) -> str:
        """How users read it in messages: worker-1, server-0, scheduler."""
        return "scheduler" if self.role == "scheduler" else f"{self.role}-{self.index}"


def worker_count(spec: tj.TrainJobSpec) -> int:
    """Workers started. The operator starts workers.max; workers.min is the gang's floor (PodGroup)."""
    return spec.workers.max


def uses_parameter_servers(spec: tj.TrainJobSpec) -> bool:
    return worker_count(spec) > 1


def members(spec: tj.TrainJobSpec) -> list[Member]:
    """Every pod of the job, scheduler and servers first (workers connect to them)."""
    out: list[Member] = []
    if uses_parameter_servers(spec):
        out.append(Member("scheduler", 0))
        out.extend(Member("server", i) for i in range(spec.parameter_servers or worker_count(spec)))
    out.extend(Member("worker", i) for i in range(worker_count(spec)))
    return out


def pod_names(job: tj.TrainJob) -> list[str]:
    return [m.pod_name(job.metadata.name) for m in members(job.spec)]


def owner_reference(job: tj.TrainJob, uid: str) -> dict[str, Any]:
    """Makes the child part of the job: deleting the TrainJob garbage-collects it."""
    return {"apiVersion": tj.API_VERSION, "kind": tj.KIND, "name": job.metadata.name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(job: tj.TrainJob, name: str, uid: str | None, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    if uid:
        meta["ownerReferences"] = [owner_reference(job, uid)]
    return meta


def job_labels(job: tj.TrainJob) -> dict[str, str]:
    labels = {LABEL_JOB: job.metadata.name, LABEL_MANAGED_BY: MANAGED_BY}
    if job.spec.project_id:
        labels[LABEL_PROJECT] = job.spec.project_id
    return labels


def pod_labels(job: tj.TrainJob, member: Member, attempt: int) -> dict[str, str]:
    labels = job_labels(job) | {LABEL_ROLE: member.role, LABEL_INDEX: str(member.index),
                                LABEL_ATTEMPT: str(attempt)}
    if job.spec.queue_name:
        # Kueue's pod integration admits the job's pods as one group of this size.
        labels[KUEUE_QUEUE_LABEL] = job.spec.queue_name
        labels[KUEUE_GROUP_LABEL] = job.metadata.name
    return labels


def _env(job: tj.TrainJob, member: Member, settings: PodSettings,
         owner_uid: str | None = None) -> list[dict[str, Any]]:
    """The environment every container of the job sees (docs/architecture.md)."""
    index = member.index if member.role == "worker" else 0
    env: list[dict[str, Any]] = [
        {"name": "JOB_NAME", "value": job.metadata.name},
        # What the job record of the outputs names (aidi/dataspace/lineage.py): the job, its image and code.
        {"name": "AIDI_JOB_NAMESPACE", "value": job.metadata.namespace or ""},
        {"name": "AIDI_JOB_UID", "value": owner_uid or ""},
        {"name": "AIDI_JOB_IMAGE", "value": job.spec.image or settings.job_image},
        {"name": "AIDI_CODE_SHA256", "value": code_sha256(job)},
        {"name": "WORKING_PATH", "value": WORKING_PATH},
        {"name": "AIDI_ROLE", "value": member.role},
        {"name": "AIDI_WORKER_INDEX", "value": str(index)},
        {"name": "AIDI_WORKER_COUNT", "value": str(worker_count(job.spec))},
        {"name": "AIDI_DATASPACE_ENDPOINT", "value": settings.dataspace_endpoint},
        {"name": "AIDI_DATASPACE_BUCKET", "value": settings.dataspace_bucket},
    ]
    # Optional: a file:// dataspace or an anonymous S3 needs no credentials; a missing key then shows
    # up as aidi's own "no credentials" error rather than a pod stuck in CreateContainerConfigError.
    # The team's own bucket and account (docs/security.md): only its namespace's Secret holds them.
    for var, key in (("AIDI_DATASPACE_ACCESS_KEY", "accessKey"), ("AIDI_DATASPACE_SECRET_KEY", "secretKey"),
                     ("AIDI_DATASPACE_TEAM_BUCKET", "bucket")):
        env.append({"name": var, "valueFrom": {"secretKeyRef": {
            "name": settings.dataspace_secret, "key": key, "optional": True}}})
    if uses_parameter_servers(job.spec):
        env.extend(dmlc_env(job, member))
    return env


def dmlc_env(job: tj.TrainJob, member: Member) -> list[dict[str, Any]]:
    """ps-lite's rendezvous variables, as Kubeflow's MXJob sets them."""
    servers = job.spec.parameter_servers or worker_count(job.spec)
    return [
        {"name": "DMLC_ROLE", "value": member.role},
        {"name": "DMLC_PS_ROOT_URI", "value": f"{Member('scheduler', 0).pod_name(job.metadata.name)}."
                                               f"{job.metadata.name}"},
        {"name": "DMLC_PS_ROOT_PORT", "value": str(DMLC_PORT)},
        {"name": "DMLC_NUM_SERVER", "value": str(servers)},
        {"name": "DMLC_NUM_WORKER", "value": str(worker_count(job.spec))},
        # ps-lite's scheduler binds its own DMLC_PS_ROOT_URI, and ZeroMQ binds only to addresses, never to a
        # DNS name such as the headless Service's: with this it binds 0.0.0.0 (found in real containers).
        {"name": "DMLC_USE_KUBERNETES", "value": "1"},
    ]


def fetch_code_command(uri: str) -> list[str]:
    return ["aidi", "fetch-code", uri, "--password-file", PASSWORD_FILE, "--dest", WORKING_PATH]


def fetch_data_command(inputs: list[tj.DatasetInput], record: str | None = None) -> list[str]:
    recording = ["--record", record] if record else []
    return ["aidi", "fetch-data", "--dest", INPUT_DIR, *recording, *(f"{d.name}:{d.type}:{d.version}" for d in inputs)]


def code_sha256(job: tj.TrainJob) -> str:
    """The code package's sha256, which traincli puts in its name (``.../<sha256>.tar.gz.enc``); '' if not."""
    package = job.spec.code_package
    name = package.uri.rsplit("/", 1)[-1] if package is not None else ""
    digest = name.split(".", 1)[0]
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else ""


def sync_output_command(output: tj.DatasetOutput) -> list[str]:
    return ["aidi", "sync-output", "--src", OUTPUT_DIR, "--name", output.name, "--type", output.type]


def checkpoint_prefix(job: tj.TrainJob, owner_uid: str | None) -> str:
    """``checkpoints/<namespace>/<job>/<uid>/``: the uid keeps a job submitted again under the same name from
    resuming the checkpoints of the one before (aidi/dataspace/checkpoints.py)."""
    return f"checkpoints/{job.metadata.namespace or 'default'}/{job.metadata.name}/{owner_uid or 'no-uid'}/"


def has_checkpoints(job: tj.TrainJob, member: Member) -> bool:
    """The workers of a job whose outputs go to the dataspace: every one restores (any may be the next chief);
    only the chief's copies."""
    return has_sync(job, member) and job.spec.checkpoints.enabled


def fetch_checkpoint_command(prefix: str) -> list[str]:
    return ["aidi", "fetch-checkpoint", "--prefix", prefix, "--dest", OUTPUT_DIR, "--message-file", TERMINATION_LOG]


def sync_checkpoints_command(job: tj.TrainJob, prefix: str, attempt: int) -> list[str]:
    sync = job.spec.checkpoints
    command = ["aidi", "sync-checkpoints", "--prefix", prefix, "--src", OUTPUT_DIR, "--attempt", str(attempt),
               "--interval", str(sync.interval_seconds), "--until", EXIT_CODE_FILE, "--rank-file", RANK_FILE,
               # A writable volume of the pod: the container's own file system may be read-only.
               "--staging", f"{DONE_DIR}/staging"]
    if sync.max_bytes_per_second:
        command += ["--max-bytes-per-second", str(sync.max_bytes_per_second)]
    return command


# The trainer's command runs as a child so that SIGTERM reaches it (a shell as PID 1 ignores it), and its
# exit code lands where the sync container waits for it.
_TRAINER_WRAPPER = f"""\
( while :; do touch {HEARTBEAT_FILE}; sleep {HEARTBEAT_SECONDS}; done ) </dev/null >/dev/null 2>&1 &
beat=$!
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
kill "$beat" 2>/dev/null
echo "$rc" > {EXIT_CODE_FILE}
exit "$rc"
"""


# ps-lite's rank 0 writes the outputs, and it need not be worker 0's pod: only the pod where the trainer said
# rank 0 syncs them (worker 0's, when the trainer says nothing), so a job makes one version.
_CHIEF_ONLY = (f'rank=$(cat {RANK_FILE} 2>/dev/null || echo "${{AIDI_WORKER_INDEX:-0}}")\n'
               'if [ "$rank" != 0 ]; then echo "rank $rank: the chief\'s pod (rank 0) syncs the outputs"; exit 0; fi')


def sync_script(output: tj.DatasetOutput, checkpoints: list[str] | None = None, prefix: str = "") -> str:
    """The sync container: wait for the trainer's exit code; upload the outputs only after a success.

    With ``checkpoints`` (the ``aidi sync-checkpoints`` command line) that loop copies checkpoints meanwhile,
    makes a last copy when the trainer ends (or the pod is deleted), and the checkpoints under ``prefix`` are
    removed once a successful run's outputs are a version of their own."""
    if not checkpoints:
        return f"""\
while [ ! -f {EXIT_CODE_FILE} ]; do
  if [ -f {HEARTBEAT_FILE} ] &&
     [ $(( $(date +%s) - $(stat -c %Y {HEARTBEAT_FILE}) )) -gt {HEARTBEAT_STALE_SECONDS} ]; then
    echo "the trainer container stopped without an exit code; outputs not synced" >&2; exit 1
  fi
  sleep 2
done
rc=$(cat {EXIT_CODE_FILE})
if [ "$rc" != 0 ]; then echo "the trainer exited with code $rc; outputs not synced"; exit 0; fi
{_CHIEF_ONLY}
exec {shlex.join(sync_output_command(output))}
"""
    delete = shlex.join(["aidi", "delete-checkpoints", "--prefix", prefix])
    return f"""\
{shlex.join(checkpoints)} &
ckpt=$!
trap 'kill -TERM "$ckpt" 2>/dev/null; wait "$ckpt"; exit 143' TERM INT
while [ ! -f {EXIT_CODE_FILE} ]; do
  if [ -f {HEARTBEAT_FILE} ] &&
     [ $(( $(date +%s) - $(stat -c %Y {HEARTBEAT_FILE}) )) -gt {HEARTBEAT_STALE_SECONDS} ]; then
    echo "the trainer container stopped without an exit code; outputs not synced" >&2
    kill -TERM "$ckpt" 2>/dev/null; wait "$ckpt"; exit 1
  fi
  sleep 2
done
wait "$ckpt"
rc=$(cat {EXIT_CODE_FILE})
if [ "$rc" != 0 ]; then
  echo "the trainer exited with code $rc; outputs not synced, its last checkpoint kept"; exit 0
fi
{_CHIEF_ONLY}
{shlex.join(sync_output_command(output))} || exit $?
{delete} || echo "the job's checkpoints were not deleted; 'aidi delete-checkpoints --prefix {prefix}' removes them"
"""


def _scaled(quantity: str, times: int) -> str:
    """``quantity`` × ``times`` in the quantity's own unit ("16Gi" × 4 = "64Gi", "500m" × 2 = "1000m")."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)(.*)$", quantity)
    if times == 1 or match is None:
        return quantity
    number = float(match.group(1)) * times
    text = str(int(number)) if number.is_integer() else f"{number:g}"
    return text + match.group(2)


def _resources(job: tj.TrainJob, member: Member, hardening: PodHardening) -> dict[str, Any]:
    """Requests by default (per GPU for workers, one share for the other roles) so that no job pod is
    BestEffort, the first evicted on a busy node; the job's own spec.resources win, key by key."""
    share = max(job.spec.gpus_per_worker, 1) if member.role == "worker" else 1
    requests: dict[str, str] = {"cpu": _scaled(hardening.cpu_per_gpu, share),
                                "memory": _scaled(hardening.memory_per_gpu, share)}
    if member.role != "worker":
        return {"requests": requests}
    limits = {k: str(v) for k, v in job.spec.resources.limits.items()}
    # A limit without a request: Kubernetes takes the limit as the request (a default above it would
    # make the pod invalid).
    requests = {k: v for k, v in requests.items() if k not in limits}
    requests |= {k: str(v) for k, v in job.spec.resources.requests.items()}
    if job.spec.gpus_per_worker:
        # Extended resources must have requests == limits; setting both says so explicitly.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(job.spec.gpus_per_worker)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


def password_secret(job: tj.TrainJob) -> tj.SecretKeyRef:
    """The Secret holding the code package password; traincli names it ``<job>-code``."""
    package = job.spec.code_package
    if package is not None and package.password_secret_ref is not None:
        return package.password_secret_ref
    return tj.SecretKeyRef(name=f"{job.metadata.name}-code", key="password")


def has_sync(job: tj.TrainJob, member: Member) -> bool:
    """Every worker of a job with an output runs the sync container; only the chief's pod uploads (the trainer's
    rank 0, which may be any worker's pod: ``RANK_FILE``), so a job makes one new version."""
    return job.spec.data_space.output is not None and member.role == "worker"


def runs_as_root(job: tj.TrainJob, hardening: PodHardening) -> bool:
    """The job's main container runs as root: asked by the job (spec.runAsRoot) or the cluster's default."""
    return job.spec.run_as_root if job.spec.run_as_root is not None else hardening.run_as_root


def pod_security_context(hardening: PodHardening) -> dict[str, Any]:
    """The pod-level context: what Pod Security ``restricted`` wants (the main container may override
    the user when the job runs as root). fsGroup makes the emptyDirs and the password file readable."""
    uid = hardening.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context(root: bool = False) -> dict[str, Any]:
    """Per container: no privilege escalation, no capabilities. A root container keeps the runtime's
    default capabilities (what images that need root use them for: chown, apt) — Pod Security
    ``baseline``, not ``restricted``."""
    if root:
        return {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False}
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _empty_dir(name: str, size_limit: str, memory: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"sizeLimit": size_limit}
    if memory:
        source["medium"] = "Memory"
    return {"name": name, "emptyDir": source}


def _step_resources(hardening: PodHardening) -> dict[str, Any]:
    return {"requests": {"cpu": hardening.step_cpu, "memory": hardening.step_memory}}


def build_pod(job: tj.TrainJob, member: Member, settings: PodSettings, *, attempt: int = 0,
              owner_uid: str | None = None, deadline_seconds: int | None = None) -> dict[str, Any]:
    """The manifest of one pod of the job.

    ``attempt`` is the job's restart count (label ``aidi.io/attempt``); ``deadline_seconds`` the run time
    left, set as the pod's own ``activeDeadlineSeconds`` so the kubelet stops it even if the operator
    is down.
    """
    spec = job.spec
    hard = settings.hardening
    env = _env(job, member, settings, owner_uid)
    sync = has_sync(job, member)
    volumes: list[dict[str, Any]] = [
        _empty_dir("code", hard.code_size_limit),
        _empty_dir("data-input", hard.input_size_limit),
        _empty_dir("data-output", hard.output_size_limit),
        # MXNet's decoding workers share memory through /dev/shm; the container default is 64 MiB.
        _empty_dir("dshm", hard.shm_size_limit, memory=True),
    ]
    # The pod-side steps never run as root, whatever the job asks: they handle untrusted archives.
    step_security = container_security_context()
    init: list[dict[str, Any]] = []
    if spec.code_package is not None:
        secret = password_secret(job)
        # Owner-only; the kubelet adds group read for the pod's fsGroup, the fetch step's group. Only
        # fetch-code mounts this volume.
        volumes.append({"name": "code-password", "secret": {
            "secretName": secret.name, "items": [{"key": secret.key, "path": "password"}], "defaultMode": 0o400}})
        init.append({"name": FETCH_CODE_CONTAINER, "image": settings.fetch_image,
                     "command": fetch_code_command(spec.code_package.uri), "env": env,
                     "resources": _step_resources(hard), "securityContext": step_security,
                     "volumeMounts": [_mount("code", WORKING_PATH), _mount("code-password", PASSWORD_DIR, True)]})
    checkpoints = has_checkpoints(job, member)
    prefix = checkpoint_prefix(job, owner_uid)
    if member.role == "worker" and spec.data_space.inputs:
        # The uploading worker's fetch step records the versions it really fetched among the outputs (lineage).
        record = f"{OUTPUT_DIR}/{JOB_RECORD}" if sync else None
        init.append({"name": FETCH_DATA_CONTAINER, "image": settings.fetch_image,
                     "command": fetch_data_command(spec.data_space.inputs, record), "env": env,
                     "resources": _step_resources(hard), "securityContext": step_security,
                     "volumeMounts": [_mount("data-input", INPUT_DIR)]
                     + ([_mount("data-output", OUTPUT_DIR)] if sync else [])})
    if checkpoints:
        # Before the trainer starts, whatever the attempt: a suspended and resumed job resumes too.
        init.append({"name": FETCH_CHECKPOINT_CONTAINER, "image": settings.fetch_image,
                     "command": fetch_checkpoint_command(prefix), "env": env,
                     "resources": _step_resources(hard), "securityContext": step_security,
                     "volumeMounts": [_mount("data-output", OUTPUT_DIR)]})

    main_mounts = [_mount("code", WORKING_PATH), _mount("data-input", INPUT_DIR), _mount("data-output", OUTPUT_DIR),
                   _mount("dshm", "/dev/shm")]
    command = list(spec.command)
    if sync:
        # The exit-code and rank files; with checkpoints also the copy loop's staging of one checkpoint's new
        # files, at most what the output folder holds.
        volumes.append(_empty_dir("done", hard.output_size_limit if checkpoints else "1Mi"))
        main_mounts.append(_mount("done", DONE_DIR))
        command = ["sh", "-c", _TRAINER_WRAPPER, "aidi-trainer", *command]
        rank: list[dict[str, Any]] = [{"name": "AIDI_RANK_FILE", "value": RANK_FILE}]
    else:
        rank = []
    main: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        "image": spec.image or settings.job_image,
        "command": command,
        "workingDir": WORKING_PATH,
        "env": env + rank + [e.to_wire() for e in spec.env],
        "volumeMounts": main_mounts,
        "securityContext": container_security_context(runs_as_root(job, hard)),
        "resources": _resources(job, member, hard),
    }
    if uses_parameter_servers(spec):
        main["ports"] = [{"name": "dmlc", "containerPort": DMLC_PORT}]
    containers = [main]
    if sync and spec.data_space.output is not None:
        containers.append({"name": SYNC_CONTAINER, "image": settings.fetch_image,
                           "command": ["sh", "-c", sync_script(
                               spec.data_space.output,
                               sync_checkpoints_command(job, prefix, attempt) if checkpoints else None, prefix)],
                           "env": env,
                           "resources": _step_resources(hard), "securityContext": step_security,
                           "volumeMounts": [_mount("data-output", OUTPUT_DIR, True), _mount("done", DONE_DIR)]})

    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang itself; a pod that fails stays failed.
        "restartPolicy": "Never",
        "priorityClassName": f"aidi-priority-{spec.priority}",
        "enableServiceLinks": False,
        # The namespace's default ServiceAccount token is no business of a training job's; a job that
        # talks to the API server asks with spec.serviceAccountToken.
        "automountServiceAccountToken": bool(spec.service_account_token),
        "securityContext": pod_security_context(hard),
        "initContainers": init,
        "containers": containers,
        "volumes": volumes,
    }
    if uses_parameter_servers(spec):
        pod_spec["hostname"] = member.pod_name(job.metadata.name)
        pod_spec["subdomain"] = job.metadata.name
    if deadline_seconds is not None:
        pod_spec["activeDeadlineSeconds"] = max(1, int(deadline_seconds))
    scheduler = spec.scheduler_name
    if scheduler:
        pod_spec["schedulerName"] = scheduler
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = [t.to_wire() for t in spec.tolerations]
    given = {t.get("key") for t in tolerations}
    tolerations += [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": NODE_LOST_SECONDS}
                    for key in NODE_LOST_TAINTS if key not in given]
    pod_spec["tolerations"] = tolerations
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.to_wire() for s in spec.image_pull_secrets]
    if not init:
        del pod_spec["initContainers"]

    metadata = _metadata(job, member.pod_name(job.metadata.name), owner_uid, pod_labels(job, member, attempt))
    annotations: dict[str, str] = {}
    if uses_gang_scheduling(spec):
        annotations[VOLCANO_GROUP_ANNOTATION] = job.metadata.name
    if spec.queue_name:
        annotations[KUEUE_GROUP_TOTAL] = str(len(members(spec)))
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def build_pods(job: tj.TrainJob, settings: PodSettings, *, attempt: int = 0, owner_uid: str | None = None,
               deadline_seconds: int | None = None) -> list[dict[str, Any]]:
    return [build_pod(job, m, settings, attempt=attempt, owner_uid=owner_uid, deadline_seconds=deadline_seconds)
            for m in members(job.spec)]


def build_service(job: tj.TrainJob, owner_uid: str | None = None) -> dict[str, Any] | None:
    """The headless Service that gives parameter-server pods their DNS names; None for one worker."""
    if not uses_parameter_servers(job.spec):
        return None
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(job, job.metadata.name, owner_uid, job_labels(job)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: job.metadata.name},
            # ps-lite connects before any readiness is known; publish addresses as soon as pods exist.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "dmlc", "port": DMLC_PORT, "targetPort": DMLC_PORT}],
        },
    }


def build_network_policy(job: tj.TrainJob, owner_uid: str | None = None) -> dict[str, Any]:
    """Ingress to the job's pods only from the job's own pods, on TCP; nothing else in (egress stays open:
    the pods fetch from the dataspace). Any TCP port rather than only 9091: ps-lite's scheduler listens
    on DMLC_PS_ROOT_PORT, but workers and servers bind ports it hands out at random. A single-worker
    job listens on nothing, so its policy lets nothing in."""
    own = {"matchLabels": {LABEL_JOB: job.metadata.name}}
    ingress: list[dict[str, Any]] = []
    if uses_parameter_servers(job.spec):
        ingress.append({"from": [{"podSelector": own}], "ports": [{"protocol": "TCP"}]})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(job, job.metadata.name, owner_uid, job_labels(job)),
        "spec": {"podSelector": own, "policyTypes": ["Ingress"], "ingress": ingress},
    }


# No TrainJob can have this name (job names are DNS-1035 labels: no dots), so no job's own policy can take it.
ISOLATION_POLICY = "trainjobs.aidi.io"


def build_isolation_policy(namespace: str) -> dict[str, Any]:
    """The namespace's floor under every job's own policy: nothing may connect to any pod the operator makes.

    NetworkPolicies add up, so with this in place a job's pods are closed from the moment they exist, and
    its own policy (``build_network_policy``) only opens them to each other: it need not come before them
    (the operator makes it once a pod is placed). Not owned by any job: it stays with the namespace.
    """
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": ISOLATION_POLICY, "namespace": namespace,
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "spec": {"podSelector": {"matchLabels": {LABEL_MANAGED_BY: MANAGED_BY}}, "policyTypes": ["Ingress"],
                 "ingress": []},
    }


def uses_gang_scheduling(spec: tj.TrainJobSpec) -> bool:
    return spec.scheduler_name == VOLCANO_SCHEDULER


def gang_size(spec: tj.TrainJobSpec) -> int:
    return spec.min_available or len(members(spec))


def build_podgroup(job: tj.TrainJob, owner_uid: str | None = None) -> dict[str, Any] | None:
    """Volcano's PodGroup: none of the job's pods is bound until ``minMember`` of them fit at once."""
    if not uses_gang_scheduling(job.spec):
        return None
    spec: dict[str, Any] = {"minMember": gang_size(job.spec),
                            "priorityClassName": f"aidi-priority-{job.spec.priority}"}
    return {"apiVersion": PODGROUP_API_VERSION, "kind": "PodGroup",
            "metadata": _metadata(job, job.metadata.name, owner_uid, job_labels(job)), "spec": spec}
