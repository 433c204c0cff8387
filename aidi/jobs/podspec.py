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
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
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

MAIN_CONTAINER = "trainer"
FETCH_CODE_CONTAINER = "fetch-code"
FETCH_DATA_CONTAINER = "fetch-data"
SYNC_CONTAINER = "sync-output"
GPU_RESOURCE = "nvidia.com/gpu"
DMLC_PORT = 9091  # Kubeflow MXJob's default port

# The sync container gives up when the trainer's heartbeat is older than this: a container killed as a
# whole (cgroup OOM kill) cannot write its exit code, and the pod must still finish.
HEARTBEAT_SECONDS = 10
HEARTBEAT_STALE_SECONDS = 60

Role = Literal["worker", "server", "scheduler"]


@dataclass(frozen=True)
class PodSettings:
    """What the cluster, not the job, decides: default images and where the dataspace is."""

    job_image: str = "aidi/jobimage:0.1.0"
    fetch_image: str = "aidi/operator:0.1.0"
    dataspace_endpoint: str = ""
    dataspace_bucket: str = "aidi"
    dataspace_secret: str = "aidi-dataspace"


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
    for var, key in (("AIDI_DATASPACE_ACCESS_KEY", "accessKey"), ("AIDI_DATASPACE_SECRET_KEY", "secretKey")):
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


def sync_script(output: tj.DatasetOutput) -> str:
    """The sync container: wait for the trainer's exit code; upload the outputs only after a success."""
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
exec {shlex.join(sync_output_command(output))}
"""


def _resources(job: tj.TrainJob, member: Member) -> dict[str, Any]:
    if member.role != "worker":
        return {}
    requests = {k: str(v) for k, v in job.spec.resources.requests.items()}
    limits = {k: str(v) for k, v in job.spec.resources.limits.items()}
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
    """Only worker 0 uploads outputs (rank 0 writes checkpoints), so a job makes one new version."""
    return job.spec.data_space.output is not None and member == Member("worker", 0)


def build_pod(job: tj.TrainJob, member: Member, settings: PodSettings, *, attempt: int = 0,
              owner_uid: str | None = None, deadline_seconds: int | None = None) -> dict[str, Any]:
    """The manifest of one pod of the job.

    ``attempt`` is the job's restart count (label ``aidi.io/attempt``); ``deadline_seconds`` the run time
    left, set as the pod's own ``activeDeadlineSeconds`` so the kubelet stops it even if the operator
    is down.
    """
    spec = job.spec
    env = _env(job, member, settings, owner_uid)
    sync = has_sync(job, member)
    volumes: list[dict[str, Any]] = [
        {"name": "code", "emptyDir": {}},
        {"name": "data-input", "emptyDir": {}},
        {"name": "data-output", "emptyDir": {}},
        # MXNet's decoding workers share memory through /dev/shm; the container default is 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    init: list[dict[str, Any]] = []
    if spec.code_package is not None:
        secret = password_secret(job)
        # Readable by any user: the fetch image runs as non-root, and only fetch-code mounts this volume.
        volumes.append({"name": "code-password", "secret": {
            "secretName": secret.name, "items": [{"key": secret.key, "path": "password"}], "defaultMode": 0o444}})
        init.append({"name": FETCH_CODE_CONTAINER, "image": settings.fetch_image,
                     "command": fetch_code_command(spec.code_package.uri), "env": env,
                     "volumeMounts": [_mount("code", WORKING_PATH), _mount("code-password", PASSWORD_DIR, True)]})
    if member.role == "worker" and spec.data_space.inputs:
        # The uploading worker's fetch step records the versions it really fetched among the outputs (lineage).
        record = f"{OUTPUT_DIR}/{JOB_RECORD}" if sync else None
        init.append({"name": FETCH_DATA_CONTAINER, "image": settings.fetch_image,
                     "command": fetch_data_command(spec.data_space.inputs, record), "env": env,
                     "volumeMounts": [_mount("data-input", INPUT_DIR)]
                     + ([_mount("data-output", OUTPUT_DIR)] if sync else [])})

    main_mounts = [_mount("code", WORKING_PATH), _mount("data-input", INPUT_DIR), _mount("data-output", OUTPUT_DIR),
                   _mount("dshm", "/dev/shm")]
    command = list(spec.command)
    if sync:
        volumes.append({"name": "done", "emptyDir": {}})
        main_mounts.append(_mount("done", DONE_DIR))
        command = ["sh", "-c", _TRAINER_WRAPPER, "aidi-trainer", *command]
    main: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        "image": spec.image or settings.job_image,
        "command": command,
        "workingDir": WORKING_PATH,
        "env": env + [e.to_wire() for e in spec.env],
        "volumeMounts": main_mounts,
    }
    resources = _resources(job, member)
    if resources:
        main["resources"] = resources
    if uses_parameter_servers(spec):
        main["ports"] = [{"name": "dmlc", "containerPort": DMLC_PORT}]
    containers = [main]
    if sync and spec.data_space.output is not None:
        containers.append({"name": SYNC_CONTAINER, "image": settings.fetch_image,
                           "command": ["sh", "-c", sync_script(spec.data_space.output)], "env": env,
                           "volumeMounts": [_mount("data-output", OUTPUT_DIR, True), _mount("done", DONE_DIR)]})

    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang itself; a pod that fails stays failed.
        "restartPolicy": "Never",
        "priorityClassName": f"aidi-priority-{spec.priority}",
        "enableServiceLinks": False,
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
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.tolerations]
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
