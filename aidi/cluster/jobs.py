"""Following and stopping jobs: cancel (stop, keep the record), resume, delete (remove), wait, pick a pod's log.

``cancel`` sets ``spec.suspend: true`` and stamps the annotation ``aidi.io/cancelled-at``: the operator
deletes the pods (the documented meaning of suspend) and the TrainJob, its status and its Secret stay, so
``status`` still explains what happened; ``resume`` undoes it. ``delete`` removes the TrainJob and,
through owner references, its pods and Secret.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aidi.api import aidi_form
from aidi.cluster.client import JobClient
from aidi.cluster.kube import CANCEL_ANNOTATION
from aidi.errors import AidiError, AuthError, ConnectionFailed, NotFoundError, UsageError
from aidi.jobs import podspec, progress
from aidi.jobs.lifecycle import FINISHED

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 125
UNREACHABLE_GRACE_SECONDS = 300.0

log = logging.getLogger(__name__)


def phase_of(job: dict[str, Any]) -> str:
    status = job.get("status") or {}
    if status.get("phase"):
        return str(status["phase"])
    return "Suspended" if (job.get("spec") or {}).get("suspend") else "Pending"


def is_cancelled(job: dict[str, Any]) -> bool:
    annotations = job["metadata"].get("annotations") or {}
    return bool((job.get("spec") or {}).get("suspend")) and bool(annotations.get(CANCEL_ANNOTATION))


def cancel(client: JobClient, name: str) -> str:
    """Stop the job's pods and keep its record. Returns the phase it was in."""
    job = client.get_job(name)
    phase = phase_of(job)
    if phase in FINISHED:
        raise UsageError(f"job {name} already {phase}; nothing to cancel (`traincli delete {name}` removes it)")
    if is_cancelled(job):
        return "Cancelled"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.patch_job(name, {"metadata": {"annotations": {CANCEL_ANNOTATION: now}}, "spec": {"suspend": True}})
    return phase


def resume(client: JobClient, name: str) -> None:
    job = client.get_job(name)
    if not (job.get("spec") or {}).get("suspend"):
        raise UsageError(f"job {name} is not cancelled or suspended; nothing to resume")
    client.patch_job(name, {"metadata": {"annotations": {CANCEL_ANNOTATION: None}}, "spec": {"suspend": False}})


def delete(client: JobClient, name: str) -> list[str]:
    """Delete the TrainJob and its code Secret. Returns what was removed."""
    secret = aidi_form.code_secret_name(name)
    client.get_job(name)  # a missing or forbidden job is reported as such, before anything is read or removed
    # The garbage collector may delete the Secret (owned by the job) before we do: look first, so the answer
    # does not depend on who was faster. A team's APP KEY may neither read nor delete Secrets (docs/security.md):
    # then only what is known is reported; the Secret traincli made is owned by the job and goes with it.
    had_secret = _secret_question(client.secret_exists, secret)
    client.delete_job(name)
    removed = [f"trainjob/{name}"]
    # Owner references make the cluster collect it; deleting it here too covers servers without a
    # garbage collector and jobs whose Secret could not be owned.
    if _secret_question(client.delete_secret, secret) or had_secret:
        removed.append(f"secret/{secret}")
    return removed


def _secret_question(ask: Callable[[str], bool], secret: str) -> bool | None:
    try:
        return ask(secret)
    except AuthError:
        return None


@dataclass
class WaitResult:
    name: str
    phase: str
    exit_code: int
    reason: str | None
    message: str | None
    waited_seconds: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def wait(client: JobClient, name: str, timeout: float | None = None, interval: float = 5.0,
         on_change: Callable[[str, dict[str, Any]], None] | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> WaitResult:
    """Poll until the job Succeeds, Fails or is cancelled, or ``timeout`` seconds pass.

    Polling (not a watch) because a pipeline's wait must survive API-server restarts and idle-connection
    timeouts, and a few requests a minute cost nothing.
    """
    start = clock()
    last_phase = None
    failing_since: float | None = None
    while True:
        try:
            job = client.get_job(name)
            failing_since = None
        except NotFoundError:
            raise NotFoundError(f"job {name} does not exist (or was deleted while waiting) in namespace "
                                f"{client.namespace}") from None
        except ConnectionFailed as exc:
            # An API server restart or a network blip must not fail a pipeline that waits for hours.
            failing_since = clock() if failing_since is None else failing_since
            if clock() - failing_since > UNREACHABLE_GRACE_SECONDS:
                raise
            log.warning("%s; retrying", exc)
            sleep(interval)
            continue
        phase = "Cancelled" if is_cancelled(job) else phase_of(job)
        status = job.get("status") or {}
        if phase != last_phase and on_change is not None:
            on_change(phase, job)
        last_phase = phase
        elapsed = clock() - start
        codes = {"Succeeded": EXIT_SUCCEEDED, "Failed": EXIT_FAILED, "Cancelled": EXIT_CANCELLED}
        if phase in codes:
            return WaitResult(name, phase, codes[phase], status.get("reason"), status.get("message"), elapsed)
        if timeout is not None and elapsed >= timeout:
            return WaitResult(name, phase, EXIT_TIMEOUT, "Timeout",
                              f"still {phase} after {timeout:g}s", elapsed)
        sleep(interval if timeout is None else max(0.0, min(interval, timeout - elapsed)))


def pick_pod(pods: list[dict[str, Any]], job: str, worker: int) -> dict[str, Any]:
    """The pod of worker ``worker``: ``<job>-worker-<i>`` by name, as the operator names them."""
    wanted = f"{job}-worker-{worker}"
    for pod in pods:
        if pod["metadata"]["name"] == wanted:
            return pod
    names = ", ".join(p["metadata"]["name"] for p in pods) or "none"
    raise NotFoundError(f"job {job} has no pod {wanted} (pods now: {names}); `traincli status {job}` shows them")


def kept_log_tail(job: dict[str, Any], name: str, worker: int) -> str | None:
    """The log tail the operator kept in ``status.lastFailure`` for a failed pod that is gone, if it is that pod."""
    failure = (job.get("status") or {}).get("lastFailure") or {}
    if failure.get("pod") == f"{name}-worker-{worker}" and failure.get("logTail"):
        return str(failure["logTail"])
    return None


def default_container(pod: dict[str, Any]) -> str | None:
    """The trainer container; else kubectl's choice (the default-container annotation, else the first one)."""
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if podspec.MAIN_CONTAINER in containers:
        return podspec.MAIN_CONTAINER
    annotations = pod["metadata"].get("annotations") or {}
    if annotations.get("kubectl.kubernetes.io/default-container"):
        return annotations["kubectl.kubernetes.io/default-container"]
    return containers[0] if containers else None


# A page that refreshes every few seconds reads at most this much of a long run's log (about 10 MB of a
# trainer that logs 2 lines per interval); the synced progress.jsonl holds the whole history, and wins when longer.
PROGRESS_LOG_LINES = 20000


def progress_records(client: JobClient, name: str, pods: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The trainer's progress records on worker 0's log (docs/progress.md), read with the caller's rights;
    [] when the pod or its log is not there (yet, or any more)."""
    pods = client.job_pods(name) if pods is None else pods
    try:
        pod = pick_pod(pods, name, 0)
    except NotFoundError:
        return []
    if not any(c.get("name") == podspec.MAIN_CONTAINER for c in (pod.get("spec") or {}).get("containers") or []):
        return []
    try:
        text = client.pod_log(pod["metadata"]["name"], podspec.MAIN_CONTAINER, tail=PROGRESS_LOG_LINES)
    except AidiError:
        return []  # a pod still starting has no log yet; progress never makes `status` fail
    return progress.parse_log(text)
