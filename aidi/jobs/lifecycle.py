"""The job's lifecycle as a pure function: (job, last status, observed pods, now) → a plan.

Both runners use it: the operator (``aidi_operator.trainjobs.reconcile``) observes pods through the API server,
the local runner (``aidi.local.supervisor``) observes its processes written as pods; each calls :func:`decide`
and carries the plan out. No I/O here. Every decision is taken from the current state, so running it twice
on the same state gives the same plan (kopf coalesces events, and an operator restarted mid-job must neither
duplicate pods nor lose status).

Phases: ``Pending → Running → Succeeded | Failed``, plus ``Restarting`` (a failed gang being replaced)
and ``Suspended``. Reasons and messages are written for the user reading ``kubectl describe tj``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi.jobs.progress import ended as progress_ended

FINISHED = ("Succeeded", "Failed")
# Why a runner that restarts gangs only after a kill (``decide(..., gang_restarts=KILLED_ONLY)``) failed the job.
NO_GANG_RESTARTS = ("the local runner restarts a job only when a pod was killed (exit code 128 or above); "
                    "backoffLimit applies on a cluster")
KILLED_ONLY: Literal["killed"] = "killed"
GangRestarts = bool | Literal["killed"]
# Pod/container reasons that mean "cannot start until someone fixes something".
_WAITING_PROBLEMS = {
    "ErrImagePull": "cannot pull image",
    "ImagePullBackOff": "cannot pull image",
    "InvalidImageName": "has an invalid image name",
    "CreateContainerConfigError": "cannot start a container",
    "CreateContainerError": "cannot start a container",
    "CrashLoopBackOff": "keeps crashing",
}


@dataclass(frozen=True)
class Termination:
    """How a container ended."""

    container: str
    exit_code: int | None
    reason: str
    message: str = ""


@dataclass(frozen=True)
class PodState:
    """What the lifecycle needs of one pod: small, so that the operator can index every pod it owns."""

    name: str
    role: str
    index: int
    attempt: int | None
    phase: str
    deleting: bool = False
    reason: str = ""
    message: str = ""
    unschedulable: str = ""
    scheduled: bool = False  # placed on a node: its job's own NetworkPolicy and Service are due from now on
    waiting: tuple[str, str, str] | None = None  # (container, reason, message)
    failure: Termination | None = None  # a container of the pod that ended badly
    trainer_done: bool = False
    restored: str = ""  # the restore step's termination message: which checkpoint the pod resumes from

    @property
    def short(self) -> str:
        return "scheduler" if self.role == "scheduler" else f"{self.role}-{self.index}"

    @property
    def failed(self) -> bool:
        return self.phase == "Failed" or self.failure is not None

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded" and self.failure is None

    @property
    def finished(self) -> bool:
        return self.failed or self.succeeded

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.failed


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pod_state(pod: dict[str, Any]) -> PodState:
    """Read a pod as the kubelet reported it."""
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    unschedulable, scheduled = "", False
    for cond in status.get("conditions") or []:
        if cond.get("type") != "PodScheduled":
            continue
        scheduled = cond.get("status") == "True"
        if cond.get("status") == "False":
            unschedulable = cond.get("message") or cond.get("reason") or "no node fits the pod"
    waiting: tuple[str, str, str] | None = None
    failure: Termination | None = None
    trainer_done = False
    restored = ""
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for cs in statuses:
        state = cs.get("state") or {}
        name = cs.get("name", "")
        if "waiting" in state and state["waiting"].get("reason") in _WAITING_PROBLEMS and waiting is None:
            waiting = (name, state["waiting"]["reason"], state["waiting"].get("message", ""))
        term = state.get("terminated")
        if term is None:
            continue
        code = _int(term.get("exitCode"))
        if name == podspec.FETCH_CHECKPOINT_CONTAINER and code == 0:
            restored = (term.get("message") or "").strip()
        if name == podspec.MAIN_CONTAINER:
            trainer_done = True
        if code not in (0, None) and failure is None:
            failure = Termination(name, code, term.get("reason") or "Error", (term.get("message") or "").strip())
    phase = status.get("phase") or "Pending"
    scheduled = scheduled or phase != "Pending"
    if phase == "Failed" and failure is None:
        failure = Termination("", None, status.get("reason") or "Failed", status.get("message") or "")
    return PodState(
        name=meta.get("name", ""), role=labels.get(podspec.LABEL_ROLE, ""),
        index=_int(labels.get(podspec.LABEL_INDEX)) or 0, attempt=_int(labels.get(podspec.LABEL_ATTEMPT)),
        phase=phase, deleting=bool(meta.get("deletionTimestamp")), reason=status.get("reason") or "",
        message=status.get("message") or "", unschedulable=unschedulable, scheduled=scheduled, waiting=waiting,
        failure=failure, trainer_done=trainer_done, restored=restored,
    )


@dataclass
class Plan:
    """What to do now. The operator carries it out in this order: delete, create, status, delete job."""

    status: tj.TrainJobStatus
    create: list[podspec.Member] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    delete_job: bool = False
    failed_pod: str | None = None  # fetch this pod's log tail into status.lastFailure and an Event
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    deadline_left: int | None = None  # seconds, for the pods' own activeDeadlineSeconds
    # When time alone will change the decision (the run-time limit, the TTL after finishing): the runner
    # decides again then. Every other change comes with an event.
    wake_at: dt.datetime | None = None


def timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def set_condition(status: tj.TrainJobStatus, type_: str, true: bool, reason: str, message: str,
                  now: dt.datetime) -> None:
    """Upsert a condition; lastTransitionTime moves only when its status flips."""
    value: Literal["True", "False"] = "True" if true else "False"
    for cond in status.conditions:
        if cond.type == type_:
            if cond.status != value:
                cond.last_transition_time = timestamp(now)
            cond.status, cond.reason, cond.message = value, reason, message
            return
    if not true:
        return  # a condition that never held is left out rather than listed as False
    status.conditions.append(tj.Condition(type=type_, status=value, reason=reason, message=message,
                                          last_transition_time=timestamp(now)))


def _set_phase(status: tj.TrainJobStatus, phase: tj.Phase, reason: str, message: str) -> None:
    status.phase, status.reason, status.message = phase, reason, message


def describe_failure(pod: PodState) -> tuple[str, str]:
    """(reason, sentence) for a failed pod: "worker-1 exited with code 137 (OOMKilled)"."""
    f = pod.failure
    if f is None:
        return "PodFailed", f"{pod.short} failed"
    if f.reason == "DeadlineExceeded" or pod.reason == "DeadlineExceeded":
        return "DeadlineExceeded", f"{pod.short} ran past its deadline"
    if f.exit_code is None:
        detail = f": {f.message}" if f.message else ""
        return f.reason, f"{pod.short} failed ({f.reason}){detail}"
    where = "" if f.container in ("", podspec.MAIN_CONTAINER) else f" in {f.container}"
    if f.reason == "OOMKilled":
        return "OOMKilled", f"{pod.short} ran out of memory (OOMKilled): exited with code {f.exit_code}{where}"
    return ("WorkerFailed" if pod.role == "worker" else "ParameterServerFailed",
            f"{pod.short} exited with code {f.exit_code}{where}")


def _retryable(policy: str, pod: PodState) -> bool:
    if policy == "Never":
        return False
    if policy == "ExitCode":
        # Killed from outside (preempted, evicted, OOM): 128+signal, or no exit code at all.
        code = pod.failure.exit_code if pod.failure else None
        return code is None or code >= 128
    return True


def _counts(pods: list[PodState], role: str, created: list[podspec.Member]) -> tj.ReplicaCounts:
    counts = tj.ReplicaCounts()
    counts.pending = sum(1 for m in created if m.role == role)
    for p in pods:
        if p.role != role:
            continue
        if p.failed:
            counts.failed += 1
        elif p.succeeded:
            counts.succeeded += 1
        elif p.running:
            counts.active += 1
        else:
            counts.pending += 1
    return counts


def _count_status(status: tj.TrainJobStatus, pods: list[PodState], created: list[podspec.Member]) -> None:
    status.workers = _counts(pods, "worker", created)
    status.servers = _counts(pods, "server", created)
    status.scheduler = _counts(pods, "scheduler", created)


def _after_finish(spec: tj.TrainJobSpec, pods: list[PodState]) -> list[str]:
    """Pods that cleanPodPolicy removes once the job is over (finished pods keep their logs otherwise)."""
    if spec.clean_pod_policy == "None":
        return []
    return [p.name for p in pods if not p.deleting and (spec.clean_pod_policy == "All" or not p.finished)]


def _pending_message(pods: list[PodState], expected: int) -> tuple[str, str]:
    for p in pods:
        if p.waiting is not None:
            container, reason, detail = p.waiting
            what = _WAITING_PROBLEMS.get(reason, "is waiting")
            return reason, f"{p.short} {what} ({reason} in {container}): {detail}".rstrip(": ")
    for p in pods:
        if p.unschedulable:
            return "Unschedulable", f"{p.short} cannot be scheduled: {p.unschedulable}"
    # The same words whether the pods were made just now or seen on a later pass: one status write.
    started = sum(1 for p in pods if p.running)
    return "WaitingForPods", f"{started}/{expected} pods running; waiting for the rest to start"


def decide(job: tj.TrainJob, status: tj.TrainJobStatus, pods: list[PodState], now: dt.datetime,
           generation: int | None = None, gang_restarts: GangRestarts = True) -> Plan:
    """The next step of the job, from what is observed now.

    ``gang_restarts=False``: a failed gang is not restarted, whatever ``backoffLimit`` says. ``KILLED_ONLY``
    (the local runner): restarted within ``backoffLimit`` only when the pod was killed from outside (exit code
    128 or above, or deleted), so that a run being debugged fails once, with its log, while a killed one
    resumes from its checkpoint.
    """
    spec = job.spec
    st = status.model_copy(deep=True)
    st.observed_generation = generation
    plan = Plan(status=st)
    expected = podspec.members(spec)
    names = {m.pod_name(job.metadata.name) for m in expected}

    if st.reason == "InvalidSpec":  # the spec was fixed: start over
        st.phase = st.reason = st.message = st.completion_time = None
        st.conditions = [c for c in st.conditions if c.type != "Failed"]

    if st.phase in FINISHED:
        plan.delete = _after_finish(spec, pods)
        done = parse_time(st.completion_time)
        if spec.ttl_seconds_after_finished is not None and done is not None:
            expiry = done + dt.timedelta(seconds=spec.ttl_seconds_after_finished)
            plan.delete_job = now >= expiry
            plan.wake_at = None if plan.delete_job else expiry
        return plan

    if spec.suspend:
        plan.delete = [p.name for p in pods if not p.deleting]
        _count_status(st, [p for p in pods if p.deleting], [])
        if st.phase != "Suspended":
            plan.events.append(("Normal", "Suspended", "the job is suspended: its pods are deleted"))
        message = "the job is suspended; its pods are deleted until spec.suspend is set to false"
        _set_phase(st, "Suspended", "Suspended", message)
        set_condition(st, "Suspended", True, "Suspended", message, now)
        set_condition(st, "Running", False, "Suspended", message, now)
        st.start_time = None  # the run-time limit counts from the resume
        return plan
    if st.phase == "Suspended":
        set_condition(st, "Suspended", False, "Resumed", "the job was resumed", now)
        plan.events.append(("Normal", "Resumed", "the job was resumed; recreating its pods"))

    attempt = st.restarts
    stale = [p for p in pods if p.attempt != attempt or p.name not in names]
    current = [p for p in pods if p not in stale]

    # The run-time limit: from the job's start, or reported by the kubelet from the pods' own deadline.
    start = parse_time(st.start_time)
    deadline = spec.active_deadline_seconds
    over = deadline is not None and start is not None and now >= start + dt.timedelta(seconds=deadline)
    if over or any(p.reason == "DeadlineExceeded" for p in current):
        message = f"the job ran longer than activeDeadlineSeconds ({deadline} s); its pods were stopped"
        return _finish(plan, spec, pods, now, "Failed", "DeadlineExceeded", message, stop_all=True)

    if stale:
        plan.delete = [p.name for p in stale if not p.deleting]
        _count_status(st, current, [])
        if st.phase != "Restarting" and attempt > 0:
            _set_phase(st, "Restarting", "Restarting", st.message or "replacing the failed gang")
        elif attempt == 0:
            _set_phase(st, "Pending", "WaitingForOldPods", "waiting for pods of an earlier run to go away")
        return plan  # all-or-nothing: the new gang starts once every old pod is gone

    failed = sorted((p for p in current if p.failed), key=lambda p: (p.role != "worker", p.role, p.index))
    if failed:
        return _on_failure(plan, job, failed[0], current, now, gang_restarts)
    lost = _lost_pod(job, st, current)
    if lost is not None:
        return _on_failure(plan, job, lost, current, now, gang_restarts)

    workers = [p for p in current if p.role == "worker"]
    if len(workers) == podspec.worker_count(spec) and all(p.succeeded for p in workers):
        total = len(workers)
        message = f"{total}/{total} worker{'s' if total != 1 else ''} succeeded"
        if spec.data_space.output is not None:
            out = spec.data_space.output
            st.outputs = tj.Outputs(dataset=out.name, type=out.type)
            message += f"; outputs synced to dataset {out.name} ({out.type})"
        return _finish(plan, spec, pods, now, "Succeeded", "AllWorkersSucceeded", message)

    present = {p.name for p in current}
    plan.create = [m for m in expected if m.pod_name(job.metadata.name) not in present]
    if plan.create and st.start_time is None:
        st.start_time = timestamp(now)
        start = now
    if deadline is not None and start is not None:
        plan.wake_at = start + dt.timedelta(seconds=deadline)
        plan.deadline_left = max(1, int((plan.wake_at - now).total_seconds()))
    _count_status(st, current, plan.create)
    if plan.create:
        set_condition(st, "Created", True, "PodsCreated", _created_message(spec), now)

    resumed = _resumed(current, attempt)
    if resumed is not None and resumed != st.resumed:
        st.resumed = resumed
        plan.events.append(("Normal", "Resumed", resumed.message))

    running_workers = sum(1 for p in workers if p.running or p.succeeded)
    total_workers = podspec.worker_count(spec)
    ps_ok = all(p.running or p.succeeded for p in current if p.role != "worker")
    if not plan.create and running_workers == total_workers and ps_ok:
        message = f"{running_workers}/{total_workers} worker{'s' if total_workers != 1 else ''} running"
        if st.resumed is not None:
            message += f"; {st.resumed.message}"
        if st.phase != "Running":
            plan.events.append(("Normal", "Running", message))
        _set_phase(st, "Running", "AllWorkersRunning", message)
        set_condition(st, "Running", True, "AllWorkersRunning", message, now)
        set_condition(st, "Restarting", False, "Running", message, now)
        return plan

    reason, message = _pending_message(current, len(expected))
    if attempt > 0:
        message = f"restart {attempt} of {spec.backoff_limit}: {message}"
    _set_phase(st, "Pending", reason, message)
    return plan


def _resumed(current: list[PodState], attempt: int) -> tj.ResumeRecord | None:
    """What the workers' restore step said it restored (its termination message), as the status tells it."""
    for p in current:
        if p.role != "worker" or not p.restored:
            continue
        try:
            data = json.loads(p.restored)
            checkpoint, from_attempt = int(data["checkpoint"]), int(data["attempt"])
            summary = str(data.get("summary") or "")
        except (ValueError, KeyError, TypeError):
            return None  # not the restore step's JSON: say nothing rather than something wrong
        what = f"resumed {summary}".rstrip()
        source = "this attempt's" if from_attempt == attempt else f"attempt {from_attempt}'s"
        return tj.ResumeRecord(checkpoint=checkpoint, attempt=from_attempt, summary=summary,
                               message=f"{what} from {source} checkpoint")
    return None


def _lost_pod(job: tj.TrainJob, status: tj.TrainJobStatus, current: list[PodState]) -> PodState | None:
    """A pod of a running gang that was deleted from outside (preemption, eviction, kubectl delete pod).

    Only once the job is Running has every pod been seen, so only then does "missing" mean "deleted".
    A gang with a replaced member hangs in ps-lite, so this counts as a failure of the whole gang. Before
    Running, a pod being deleted counts too once some pod of the gang has started: its workers may have
    joined the scheduler or a server already, and would wait for the one being replaced until the wall time.
    """
    started = any((p.running or p.finished) and not p.deleting for p in current)
    if status.phase != "Running" and not started:
        return None
    by_name = {p.name: p for p in current}
    for member in podspec.members(job.spec):
        name = member.pod_name(job.metadata.name)
        pod = by_name.get(name)
        if (pod is None and status.phase == "Running") or (pod is not None and pod.deleting):
            gone = Termination("", None, "PodDeleted", "the pod was deleted (preempted, evicted or removed by hand)")
            return PodState(name=name, role=member.role, index=member.index, attempt=status.restarts,
                            phase="Failed", failure=gone)
    return None


def _created_message(spec: tj.TrainJobSpec) -> str:
    parts = [f"{podspec.worker_count(spec)} worker{'s' if podspec.worker_count(spec) != 1 else ''}"]
    if podspec.uses_parameter_servers(spec):
        servers = spec.parameter_servers or podspec.worker_count(spec)
        parts.append(f"{servers} parameter server{'s' if servers != 1 else ''} and a scheduler")
    return "created " + ", ".join(parts)


def _on_failure(plan: Plan, job: tj.TrainJob, pod: PodState, current: list[PodState], now: dt.datetime,
                gang_restarts: GangRestarts) -> Plan:
    spec, st = job.spec, plan.status
    reason, message = describe_failure(pod)
    f = pod.failure
    st.last_failure = tj.FailureRecord(pod=pod.name, reason=f.reason if f else reason,
                                       exit_code=f.exit_code if f else None, message=message)
    plan.failed_pod = pod.name
    if reason == "DeadlineExceeded":
        return _finish(plan, spec, current, now, "Failed", "DeadlineExceeded", message, stop_all=True)
    allowed = gang_restarts is True or (gang_restarts == KILLED_ONLY and _retryable("ExitCode", pod))
    if allowed and _retryable(spec.restart_policy, pod) and st.restarts < spec.backoff_limit:
        st.restarts += 1
        st.resumed = None  # the next gang says what it restored
        text = f"{message}; restarting the whole gang (restart {st.restarts} of {spec.backoff_limit})"
        plan.delete = [p.name for p in current if not p.deleting]
        _count_status(st, current, [])
        _set_phase(st, "Restarting", reason, text)
        set_condition(st, "Restarting", True, reason, text, now)
        set_condition(st, "Running", False, "Restarting", text, now)
        plan.events.append(("Warning", "Restarting", text))
        return plan
    if not _retryable(spec.restart_policy, pod):
        text = f"{message}; restartPolicy {spec.restart_policy} does not restart it"
        final = reason
    elif not allowed:
        text, final = f"{message}; {NO_GANG_RESTARTS}", reason
    else:
        text = f"{message}; backoffLimit ({spec.backoff_limit}) reached after {st.restarts} restarts"
        final = "BackoffLimitExceeded"
    return _finish(plan, spec, current, now, "Failed", final, text)


def _finish(plan: Plan, spec: tj.TrainJobSpec, pods: list[PodState], now: dt.datetime, phase: tj.Phase, reason: str,
            message: str, stop_all: bool = False) -> Plan:
    st = plan.status
    _count_status(st, pods, [])
    _end(st, phase, reason, message, now)
    plan.create = []
    stopped = [p.name for p in pods if not p.deleting and not p.finished] if stop_all else []
    plan.delete = sorted(set(stopped) | set(_after_finish(spec, pods)))
    plan.events.append(("Normal" if phase == "Succeeded" else "Warning", reason, message))
    done = parse_time(st.completion_time)
    plan.wake_at = None if spec.ttl_seconds_after_finished is None or done is None else (
        done + dt.timedelta(seconds=spec.ttl_seconds_after_finished))
    return plan


def _end(st: tj.TrainJobStatus, phase: tj.Phase, reason: str, message: str, now: dt.datetime) -> None:
    _set_phase(st, phase, reason, message)
    st.completion_time = timestamp(now)
    set_condition(st, phase, True, reason, message, now)
    set_condition(st, "Running", False, reason, message, now)
    set_condition(st, "Restarting", False, reason, message, now)
    st.progress = progress_ended(st.progress, phase)  # no ETA on a finished job; where it stopped stays


def runner_failed(status: tj.TrainJobStatus, reason: str, message: str, now: dt.datetime) -> tj.TrainJobStatus:
    """The runner itself cannot go on (the local supervisor crashed, ``RunnerError``, or vanished,
    ``RunnerLost``): the job is Failed with that reason, as for any other end."""
    st = status.model_copy(deep=True)
    _end(st, "Failed", reason, message, now)
    return st
