"""The process that runs one TrainJob on this machine: ``python -m aidi.local.supervisor JOB_DIR``.

``traincli submit`` starts it detached (its own session) and returns. It works as the operator does, with
processes for pods: it observes its pods (each one's ``pod.json``, a kubelet-style pod status), asks the
operator's lifecycle (:func:`aidi.jobs.lifecycle.decide`) what to do, and carries the plan out — builds the
pods to create with ``aidi.jobs.podspec`` (the operator's builder) and runs each one's init containers one
after another and then its containers side by side as local processes (``aidi.local.pods``), stops and
forgets the pods to delete, keeps a failed pod's log tail, and writes the status into ``job.json``. So the
phases, conditions, reasons and messages are the operator's, decided by the same code. SIGTERM
(``traincli cancel``) counts as ``spec.suspend``: the pods are deleted and the job is ``Suspended``.

One difference from the operator, asked of the lifecycle by ``gang_restarts=KILLED_ONLY``: a gang is restarted
(within ``backoffLimit``) only when a pod was killed from outside (exit code 128 or above: SIGKILL, OOM), and
then resumes from its checkpoint; a run you are debugging that fails by itself fails once, with its log.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj
from aidi.jobs import lifecycle, podspec, progress
from aidi.local import jobfile
from aidi.local import pods as localpods
from aidi.local.pods import STOP_GRACE_SECONDS, kill_group
from aidi.local.store import Namespace, read_json, update_json, write_json

log = logging.getLogger("aidi.local")

LOG_TAIL_LINES = 40
POLL_SECONDS = 0.5
# How long a pod waits for a Secret it mounts before it fails with CreateContainerConfigError.
SECRET_WAIT_SECONDS = 30.0
# status.progress from worker 0's log, as the operator refreshes it (a local file: cheap, so more often).
PROGRESS_SECONDS = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def now_stamp() -> str:
    return lifecycle.timestamp(_now())


def _exit_code(returncode: int) -> int:
    """A process killed by signal N reports -N; a container reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


class PodRunner(threading.Thread):
    """One pod, as a kubelet runs it: volumes, init containers in order, then the containers together.

    What it reports is the pod's ``status`` (phase, container states, exit codes), read by the lifecycle."""

    def __init__(self, sup: Supervisor, member: podspec.Member, manifest: dict[str, Any]) -> None:
        super().__init__(name=manifest["metadata"]["name"], daemon=True)
        self.sup, self.member, self.manifest = sup, member, manifest
        self.name_ = manifest["metadata"]["name"]
        self.dir = sup.job_dir / "pods" / self.name_
        self.fs = self.dir / "fs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.RLock()  # the pod is changed here and read by the supervisor's loop
        self.stopped = threading.Event()
        self.pod: dict[str, Any] = {}

    # -------------------------------------------------------------------------------- pod.json

    def _container_status(self, container: dict[str, Any]) -> dict[str, Any]:
        return {"name": container["name"], "ready": False, "restartCount": 0,
                "image": container.get("image", ""), "state": {"waiting": {"reason": "PodInitializing"}}}

    def write_initial(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # a new pod: fresh volumes and logs, as emptyDir
        spec = self.manifest["spec"]
        self.pod = {**self.manifest, "metadata": {**self.manifest["metadata"], "uid": f"local-{self.name_}",
                                                  "creationTimestamp": now_stamp()},
                    "spec": {**spec, "nodeName": "localhost"},
                    "status": {"phase": "Pending", "startTime": now_stamp(),
                               "initContainerStatuses": [self._container_status(c)
                                                         for c in spec.get("initContainers") or []],
                               "containerStatuses": [self._container_status(c) for c in spec["containers"]]},
                    "local": {"pids": {}}}
        if not self.pod["status"]["initContainerStatuses"]:
            del self.pod["status"]["initContainerStatuses"]
        self.save()

    def save(self) -> None:
        with self.lock:
            write_json(self.dir / "pod.json", self.pod)

    def snapshot(self) -> dict[str, Any]:
        """The pod as the kubelet would report it now."""
        with self.lock:
            return copy.deepcopy(self.pod)

    def forget(self) -> None:
        """The pod is deleted: its record goes; its logs and files stay for the user to read."""
        with self.lock:
            (self.dir / "pod.json").unlink(missing_ok=True)

    def _status_of(self, name: str) -> dict[str, Any]:
        status = self.pod["status"]
        for cs in [*(status.get("initContainerStatuses") or []), *status["containerStatuses"]]:
            if cs["name"] == name:
                return cs
        raise KeyError(name)

    def _set_state(self, name: str, state: dict[str, Any], ready: bool = False) -> None:
        with self.lock:
            cs = self._status_of(name)
            cs["state"], cs["ready"] = state, ready

    # ------------------------------------------------------------------------------------- run

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug or an OS error must end the job with a reason, not hang it
            log.exception("pod %s", self.name_)
            self._fail("RunnerError", f"the local runner failed: {type(exc).__name__}: {exc}")

    def _fail(self, reason: str | None = None, message: str = "") -> None:
        """The pod failed; ``reason``/``message`` when no container's exit code says why (as the kubelet's)."""
        with self.lock:
            status = self.pod.setdefault("status", {})
            status["phase"] = "Failed"
            if reason:
                status["reason"], status["message"] = reason, message
            self.save()

    def _set_phase(self, phase: str) -> None:
        with self.lock:
            self.pod["status"]["phase"] = phase
            self.save()

    def _run(self) -> None:
        spec = self.manifest["spec"]
        paths = localpods.PathMap(localpods.pod_mounts(self.manifest, self.fs))
        problems = localpods.prepare_volumes(self.manifest, self.fs, self.sup.namespace)
        # A kubelet keeps retrying a pod whose Secret is not there yet: traincli creates the job first and its
        # password Secret just after (owned by the job), so a missing Secret is waited for, not a failure at once.
        waited_until = time.monotonic() + SECRET_WAIT_SECONDS
        while problems and time.monotonic() < waited_until and not self.stopped.wait(0.2):
            problems = localpods.prepare_volumes(self.manifest, self.fs, self.sup.namespace)
        base = self.sup.base_env(paths, self.member)
        for init in spec.get("initContainers") or []:
            run = localpods.container_run(init, self.sup.namespace, paths, base, self.sup.extra_env,
                                          self.dir / "termination")
            if problems or run.problems:
                message = "; ".join(problems + run.problems)
                self._set_state(init["name"], {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
                self._fail("CreateContainerConfigError", message)
                return
            code = self._run_one(run)
            if code is None:
                return  # stopped
            if code != 0:
                self._fail()  # its exit code is in its container status
                return
            if init["name"] == podspec.FETCH_CODE_CONTAINER:
                self._map_code_paths(paths)
        runs = [localpods.container_run(c, self.sup.namespace, paths, base, self.sup.extra_env,
                                        self.dir / "termination") for c in spec["containers"]]
        problems += [p for r in runs for p in r.problems]
        if problems:
            message = "; ".join(problems)
            self._set_state(runs[0].name, {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
            self._fail("CreateContainerConfigError", message)
            return
        for run in runs:
            self._start(run)
        self._set_phase("Running")
        codes = {run.name: self._wait(run.name, run) for run in runs}
        if any(code is None for code in codes.values()):
            return  # stopped
        if any(code != 0 for code in codes.values()):
            self._fail()  # the exit codes are in the container statuses (the trainer's is read first)
            return
        self._set_phase("Succeeded")

    def _map_code_paths(self, paths: localpods.PathMap) -> None:
        code_dir = paths.host(podspec.WORKING_PATH)
        changed = localpods.rewrite_code_files(code_dir, paths)
        if changed:
            note = (f"[aidi local] mapped the pod's paths (/data_space/..., {podspec.WORKING_PATH}) to this machine's "
                    f"folders in {len(changed)} file(s) of the code package: {', '.join(changed)}\n")
            with open(self.dir / "logs" / f"{podspec.FETCH_CODE_CONTAINER}.log", "a", encoding="utf-8") as fh:
                fh.write(note)

    def _start(self, run: localpods.ContainerRun) -> None:
        log_path = self.dir / "logs" / f"{run.name}.log"
        with self.lock:
            if self.stopped.is_set():
                return
            proc = localpods.start(run, log_path)
            self.procs[run.name] = proc
            self.pod["local"]["pids"][run.name] = proc.pid
            self._set_state(run.name, {"running": {"startedAt": now_stamp()}}, ready=True)
            self.save()

    def _wait(self, name: str, run: localpods.ContainerRun | None = None) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        started = self._status_of(name)["state"].get("running", {}).get("startedAt")
        returncode = proc.wait()
        if self.stopped.is_set():
            return None
        code = _exit_code(returncode)
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": started,
                      "finishedAt": now_stamp()}
        message = run.termination_message() if run is not None else ""
        if message:
            terminated["message"] = message
        with self.lock:
            self._set_state(name, {"terminated": terminated})
            self.pod["local"]["pids"].pop(name, None)
            self.save()
        return code

    def _run_one(self, run: localpods.ContainerRun) -> int | None:
        self._start(run)
        return self._wait(run.name, run)

    def stop(self) -> None:
        """SIGTERM every container's process group, then SIGKILL what is left after the grace period."""
        with self.lock:
            self.stopped.set()
            procs = list(self.procs.values())
        for proc in procs:
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            kill_group(proc.pid, signal.SIGKILL)


class Supervisor:
    """Observe the pods, decide with the operator's lifecycle, carry the plan out; until the job ends."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.runner = read_json(job_dir / "runner.json")
        self.namespace = Namespace(Path(self.runner["workdir"]), self.runner["namespace"])
        self.job_file = job_dir / "job.json"
        self.stopping = threading.Event()  # SIGTERM: stop as for spec.suspend
        self.pods: dict[str, PodRunner] = {}
        self.extra_env: dict[str, str] = dict(self.runner.get("env") or {})
        self.settings = podspec.PodSettings(dataspace_endpoint=self.runner["dataspace"]["endpoint"],
                                            dataspace_bucket=self.runner["dataspace"]["bucket"])
        self.progress_due = 0.0

    def base_env(self, paths: localpods.PathMap, member: podspec.Member) -> dict[str, str]:
        """The host's environment plus what the job image would supply; the pod's env comes on top."""
        env = localpods.host_environment()
        env["AIDI_PYTHON"] = self.runner.get("python") or sys.executable
        # The trainer writes to /data_space/output when that folder exists; here it is elsewhere.
        env["AIDI_OUTPUT_DIR"] = str(paths.host(podspec.OUTPUT_DIR))
        if self.runner.get("ctx"):
            env["AIDI_CTX"] = self.runner["ctx"]
        return env

    # -------------------------------------------------------------------------------------- run

    def run(self) -> int:
        while True:
            data = read_json(self.job_file)
            job = jobfile.job_of(data)
            if self.stopping.is_set():
                job.spec.suspend = True  # `traincli cancel` (or delete): stop as the operator does for suspend
            observed = [lifecycle.pod_state(pod.snapshot()) for pod in self.pods.values()]
            plan = lifecycle.decide(job, jobfile.status_of(data), observed, _now(), jobfile.generation_of(data),
                                    gang_restarts=lifecycle.KILLED_ONLY)
            self._refresh_progress(job, plan)
            self._carry_out(job, data, plan)
            phase = plan.status.phase
            if phase in lifecycle.FINISHED:
                self._stop_pods(forget=False)  # nothing outlives the supervisor, whatever cleanPodPolicy keeps
                log.info("job %s %s: %s", job.metadata.name, phase, plan.status.message)
                return 0 if phase == "Succeeded" else 1
            if phase == "Suspended":
                self._forget_pod_records()
                return 0
            self.stopping.wait(POLL_SECONDS)

    def _carry_out(self, job: tj.TrainJob, data: dict[str, Any], plan: lifecycle.Plan) -> None:
        """In the operator's order: keep the failed pod's log, delete, create, write the status."""
        if plan.failed_pod:
            self._keep_log_tail(plan)
        # Once the job has ended its pods are stopped but keep their records, so that `traincli status` and
        # `logs` still show them (a cluster keeps the logs of finished pods; here they are on disk anyway).
        ended = plan.status.phase in lifecycle.FINISHED
        for name in plan.delete:
            runner = self.pods.get(name)
            if runner is not None:
                runner.stop()
                runner.join(timeout=STOP_GRACE_SECONDS)
                if not ended:
                    runner.forget()
                    del self.pods[name]
        for member in plan.create:
            manifest = podspec.build_pod(job, member, self.settings, attempt=plan.status.restarts,
                                         owner_uid=data["metadata"].get("uid"), deadline_seconds=plan.deadline_left)
            self._localize_dmlc(manifest)
            runner = PodRunner(self, member, manifest)
            runner.write_initial()
            self.pods[runner.name_] = runner
            runner.start()
        for type_, reason, message in plan.events:
            log.info("%s %s: %s", type_, reason, message)
        new = plan.status.to_wire()
        if new != data.get("status"):
            update_json(self.job_file, lambda job_data: job_data.__setitem__("status", new))

    def _refresh_progress(self, job: tj.TrainJob, plan: lifecycle.Plan) -> None:
        """``status.progress`` from the tail of worker 0's trainer log, as the operator reads it."""
        now = time.monotonic()
        if plan.status.phase != "Running" or now < self.progress_due:
            return
        self.progress_due = now + PROGRESS_SECONDS
        runner = self.pods.get(podspec.Member("worker", 0).pod_name(job.metadata.name))
        if runner is None:
            return
        found = progress.status_from_log(progress.tail_text(runner.dir / "logs" / f"{podspec.MAIN_CONTAINER}.log"))
        if found is not None:
            plan.status.progress = found

    def _keep_log_tail(self, plan: lifecycle.Plan) -> None:
        """The failed container's last lines go into status.lastFailure, as the operator keeps them."""
        failure, runner = plan.status.last_failure, self.pods.get(plan.failed_pod or "")
        if failure is None or runner is None:
            return
        state = lifecycle.pod_state(runner.snapshot())
        container = state.failure.container if state.failure and state.failure.container else podspec.MAIN_CONTAINER
        tail = log_tail(runner.dir / "logs" / f"{container}.log")
        if tail:
            failure.log_tail = tail

    def _localize_dmlc(self, manifest: dict[str, Any]) -> None:
        """ps-lite's scheduler address: the pod's DNS name (headless Service) becomes this machine."""
        port = self.runner.get("dmlc_port")
        for container in manifest["spec"]["containers"]:
            for var in container.get("env") or []:
                if var["name"] == "DMLC_PS_ROOT_URI":
                    var["value"] = "127.0.0.1"
                elif var["name"] == "DMLC_PS_ROOT_PORT" and port:
                    var["value"] = str(port)

    def _stop_pods(self, forget: bool) -> None:
        runners = list(self.pods.values())
        for runner in runners:
            runner.stop()
        for runner in runners:
            runner.join(timeout=STOP_GRACE_SECONDS)
            if forget:
                runner.forget()

    def _forget_pod_records(self) -> None:
        """The operator deletes a suspended job's pods; here their records go, their logs and files stay."""
        for pod_json in (self.job_dir / "pods").glob("*/pod.json"):
            pod_json.unlink(missing_ok=True)

    def fail(self, message: str) -> None:
        """The supervisor itself failed: stop everything and say so in the status."""
        self._stop_pods(forget=False)
        update_json(self.job_file, lambda data: jobfile.fail(data, "RunnerError", message, _now()))

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m aidi.local.supervisor JOB_DIR (started by `traincli submit` on a local cluster)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sup = Supervisor(Path(args[0]))
    signal.signal(signal.SIGTERM, sup.on_sigterm)
    signal.signal(signal.SIGINT, sup.on_sigterm)
    try:
        return sup.run()
    except Exception as exc:
        log.exception("the local runner failed")
        sup.fail(f"the local runner failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
