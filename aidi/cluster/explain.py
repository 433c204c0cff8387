"""What `traincli status` says: a TrainJob and its pods summarised, and every failure reason in plain words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aidi.jobs import podspec
from aidi.jobs import progress as records
from aidi.jobs.lifecycle import FINISHED

# Container and pod reasons Kubernetes reports, as a user would want them explained.
_REASONS: dict[str, str] = {
    "Unschedulable": "no node can take this pod now: not enough free GPUs, CPU or memory, or no node matches its "
                     "node selector and tolerations. It starts when resources free up; to start sooner, ask for "
                     "fewer GPUs per worker (GPU_PER_WORKER) or workers, or check the queue's quota",
    "ImagePullBackOff": "the job image cannot be pulled: check the image name and tag (DOCKER_IMAGE / spec.image) "
                        "and, for a private registry, spec.imagePullSecrets",
    "ErrImagePull": "the job image cannot be pulled: check the image name and tag (DOCKER_IMAGE / spec.image) and, "
                    "for a private registry, spec.imagePullSecrets",
    "InvalidImageName": "the image name is not valid; fix DOCKER_IMAGE / spec.image",
    "OOMKilled": "the container ran out of memory and was killed; lower the batch size, or raise the memory limit "
                 "(spec.resources.limits.memory)",
    "CrashLoopBackOff": "the container keeps exiting and Kubernetes waits longer before each restart; read why "
                        "with `traincli logs JOB --worker I --previous`",
    "CreateContainerConfigError": "the pod refers to a Secret or ConfigMap that does not exist (the code password "
                                  "Secret <job>-code, or the dataspace Secret aidi-dataspace); submit again or "
                                  "ask your platform admin",
    "CreateContainerError": "the container could not be created; see the message, often a bad command or mount",
    "ContainerCannotRun": "the container's command could not start; check spec.command / RUN_SCRIPTS",
    "DeadlineExceeded": "the job ran longer than its time limit (WALL_TIME / spec.activeDeadlineSeconds)",
    "Evicted": "the node ran short of memory or disk and evicted the pod",
    "Preempted": "a higher-priority job took the pod's resources (preemption); it restarts when they free up",
    "Error": "the container exited with an error; its log says why (`traincli logs JOB --worker I`)",
    "BackoffLimitExceeded": "the job failed more often than its backoffLimit allows",
    "NodeLost": "the node running the pod stopped answering",
}


def explain(reason: str | None) -> str:
    """A sentence for a Kubernetes reason, or '' when we have none."""
    return _REASONS.get(reason or "", "")


@dataclass
class PodState:
    """One pod as `status` shows it."""

    name: str
    role: str
    phase: str
    ready: str
    restarts: int
    node: str | None
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    explanation: str = ""


@dataclass
class JobReport:
    """A job's state for `status` (human lines or ``--json``)."""

    name: str
    namespace: str
    phase: str
    reason: str | None
    message: str | None
    suspended: bool
    cancelled: bool
    conditions: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    last_failure: dict[str, Any] | None = None
    resumed: dict[str, Any] | None = None  # status.resumed: the checkpoint the running gang restored
    pods: list[PodState] = field(default_factory=list)
    explanation: str = ""
    # From the trainer's records on worker 0's log (docs/progress.md); else the runner's status.progress.
    progress: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _role(pod: dict[str, Any]) -> str:
    labels = pod["metadata"].get("labels") or {}
    if labels.get(podspec.LABEL_ROLE):
        return labels[podspec.LABEL_ROLE]
    name = pod["metadata"]["name"]
    for role in ("worker", "server", "scheduler"):
        if f"-{role}" in name:
            return role
    return "pod"


def _container_problem(statuses: list[dict[str, Any]]) -> tuple[str, str, int | None] | None:
    """(reason, message, exit code) of the first container in trouble: waiting on a bad reason, or failed."""
    for status in statuses:
        state = status.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            last = (status.get("lastState") or {}).get("terminated") or {}
            message = waiting.get("message") or ""
            if last:
                message = (message + " " if message else "") + (
                    f"last exit code {last.get('exitCode')}" + (f" ({last['reason']})" if last.get("reason") else ""))
            return waiting["reason"], message, last.get("exitCode")
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            return (terminated.get("reason") or "Error", terminated.get("message") or "",
                    terminated.get("exitCode"))
    return None


def pod_state(pod: dict[str, Any]) -> PodState:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    init = status.get("initContainerStatuses") or []
    ready = sum(1 for c in containers if c.get("ready"))
    total = len(pod.get("spec", {}).get("containers") or containers)
    state = PodState(
        name=pod["metadata"]["name"], role=_role(pod), phase=status.get("phase") or "Pending",
        ready=f"{ready}/{total}", restarts=sum(c.get("restartCount", 0) for c in containers + init),
        node=(pod.get("spec") or {}).get("nodeName"),
    )
    if status.get("reason"):  # pod-level: Evicted, DeadlineExceeded, Preempted, NodeLost
        state.reason, state.message = status["reason"], status.get("message")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and not state.reason:
            state.reason, state.message = cond.get("reason") or "Unschedulable", cond.get("message")
    problem = _container_problem(init)
    if problem and not state.reason:
        reason, message, code = problem
        state.reason, state.exit_code = reason, code
        state.message = ("the fetch step (code package / datasets) failed: " + message).strip()
        if reason in ("Error", "CrashLoopBackOff"):
            state.explanation = ("the init step that downloads and unpacks the code package and datasets failed; "
                                 "read it with `traincli logs JOB --worker I --container fetch-code` (or fetch-data)")
    problem = _container_problem(containers)
    if problem and not state.reason:
        state.reason, state.message, state.exit_code = problem
    if state.reason and not state.explanation:
        state.explanation = explain(state.reason)
        if state.reason == "Error" and state.exit_code is not None:
            state.explanation = f"the container exited with code {state.exit_code}; " + state.explanation
    return state


def report(job: dict[str, Any], pods: list[dict[str, Any]], progress: list[dict[str, Any]] | None = None) -> JobReport:
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    suspended = bool(spec.get("suspend"))
    cancelled = suspended and bool((meta.get("annotations") or {}).get("aidi.io/cancelled-at"))
    phase = status.get("phase") or ("Suspended" if suspended else "Pending")
    rep = JobReport(
        name=meta["name"], namespace=meta.get("namespace") or "", phase=phase,
        reason=status.get("reason"), message=status.get("message"), suspended=suspended, cancelled=cancelled,
        conditions=list(status.get("conditions") or []), workers=dict(status.get("workers") or {}),
        restarts=int(status.get("restarts") or 0), start_time=status.get("startTime"),
        completion_time=status.get("completionTime"), last_failure=status.get("lastFailure"),
        resumed=status.get("resumed"),
        pods=[pod_state(p) for p in pods],
    )
    summary = records.summarize(progress or [])
    if summary is not None:
        rep.progress = summary.to_json()
    elif status.get("progress"):
        rep.progress = {"status": dict(status["progress"])}
    if cancelled:
        rep.explanation = "cancelled with `traincli cancel`: its pods are stopped and the record kept"
    elif rep.reason and explain(rep.reason):
        rep.explanation = explain(rep.reason)
    elif rep.last_failure and explain(rep.last_failure.get("reason")):
        rep.explanation = explain(rep.last_failure.get("reason"))
    elif not status:
        rep.explanation = "the operator has not picked the job up yet (is it installed and running?)"
    return rep


def render(rep: JobReport, job_hint: str) -> list[str]:
    """Human lines for `traincli status`."""
    lines = [f"job:        {rep.namespace}/{rep.name}",
             f"phase:      {rep.phase}" + (" (cancelled)" if rep.cancelled else "")
             + (f" — {rep.reason}" if rep.reason else "")]
    if rep.message:
        lines.append(f"message:    {rep.message}")
    if rep.explanation:
        lines.append(f"why:        {rep.explanation}")
    if rep.workers:
        lines.append("workers:    " + ", ".join(f"{k} {v}" for k, v in rep.workers.items()))
    if rep.restarts:
        lines.append(f"restarts:   {rep.restarts}")
    if rep.resumed and rep.resumed.get("message"):
        lines.append(f"resumed:    {rep.resumed['message']} (checkpoint {rep.resumed.get('checkpoint')})")
    if rep.start_time:
        lines.append(f"started:    {rep.start_time}" + (f", finished {rep.completion_time}"
                                                        if rep.completion_time else ""))
    if rep.conditions:
        lines.append("conditions:")
        for cond in rep.conditions:
            lines.append(f"  {cond.get('type', '?'):<11} {cond.get('status', '?'):<7} {cond.get('reason', '')}"
                         + (f": {cond['message']}" if cond.get("message") else ""))
    if rep.progress:
        lines.extend(render_progress(rep.progress))
    if rep.last_failure:
        failure = rep.last_failure
        lines.append(f"last failure: pod {failure.get('pod')} {failure.get('reason', '')}"
                     + (f" exit code {failure['exitCode']}" if failure.get("exitCode") is not None else "")
                     + (f": {failure['message']}" if failure.get("message") else ""))
    if rep.pods:
        lines.append("pods:")
        for pod in rep.pods:
            lines.append(f"  {pod.name:<40} {pod.role:<9} {pod.phase:<10} ready {pod.ready:<5} "
                         f"restarts {pod.restarts}" + (f"  node {pod.node}" if pod.node else ""))
            if pod.reason:
                lines.append(f"    {pod.reason}" + (f": {pod.message}" if pod.message else ""))
            if pod.explanation:
                lines.append(f"    → {pod.explanation.replace('JOB', job_hint)}")
    elif rep.phase not in FINISHED and not rep.suspended:
        lines.append("pods:       none yet")
    return lines


def _figures(values: dict[str, Any], limit: int = 8) -> str:
    shown = [f"{k} {v:.4g}" for k, v in list(values.items())[:limit] if isinstance(v, int | float)]
    return ", ".join(shown) + (", …" if len(values) > limit else "")


def render_progress(progress: dict[str, Any]) -> list[str]:
    """The progress lines of `traincli status`: step, epoch, iteration, rate, ETAs, losses, validation."""
    if "status" in progress:  # only the runner's short summary (the pod's log is gone or unreadable)
        st = progress["status"]
        parts = [f"step {st['step']}" if st.get("step") else None,
                 f"epoch {st['epoch']}" if st.get("epoch") else None,
                 f"iteration {st['iteration']}" if st.get("iteration") else None,
                 f"loss {st['loss']:.4g}" if isinstance(st.get("loss"), int | float) else None,
                 f"ETA {st['eta']}" if st.get("eta") else None]
        return ["progress:   " + ", ".join(p for p in parts if p) + f" (as of {st.get('updated') or '?'})"]
    if progress.get("step") is None:
        return ["progress:   starting (no training step yet)"]
    head = f"progress:   step {progress['step_label']}"
    if progress.get("state") == "done":
        return [head + " — all steps written"]
    if progress.get("epoch") is not None:
        head += f", epoch {progress['epoch']}/{progress['epochs']}, iteration {progress['iteration']}/" \
                f"{progress['iterations']}"
    if progress.get("samples_per_sec") is not None:
        head += f", {progress['samples_per_sec']:.1f} samples/s"
    lines = [head]
    if progress.get("eta_step") is not None:
        lines.append(f"ETA:        step {progress['eta_step']}, job {progress['eta_job']}"
                     f" (updated {progress.get('updated') or '?'})")
    if progress.get("loss") is not None:
        lines.append(f"loss:       {progress['loss']:.4f}" + (f" — {_figures(progress['branches'])}"
                                                               if progress.get("branches") else ""))
    if progress.get("terms"):
        lines.append(f"terms:      {_figures(progress['terms'], 12)}")
    for branch, figures in (progress.get("val") or {}).items():
        shown = {k: v for k, v in figures.items() if k in records.VAL_CURVES}
        if shown:
            lines.append(f"val {branch}: {_figures(shown)}")
    return lines
