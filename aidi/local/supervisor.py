"""The process that runs one TrainJob on this machine: ``python -m aidi.local.supervisor JOB_DIR``.

``traincli submit`` starts it detached (its own session) and returns. It builds the job's pods with
``aidi.jobs.podspec`` — the operator's builder — runs each pod's init containers one after another and then its
containers side by side as local processes (``aidi.local.pods``), and writes the pods' states into
``pod.json`` and the job's status into ``job.json`` in the operator's model (``TrainJobStatus``): the same
phases, conditions, reasons and messages. SIGTERM (``traincli cancel``) stops every container's process
group and leaves the job ``Suspended``, as the operator does for ``spec.suspend``.

One difference from the operator: a failed job is not restarted (``backoffLimit`` applies on a cluster);
a run you are debugging should fail once, with its log.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi.local import pods as localpods
from aidi.local.status import STOP_GRACE_SECONDS, kill_group, now_stamp, set_condition, suspended_status
from aidi.local.store import Namespace, read_json, update_json, write_json

log = logging.getLogger("aidi.local")

LOG_TAIL_LINES = 40
POLL_SECONDS = 0.5
NO_RESTART = "; the local runner does not restart jobs (backoffLimit applies on a cluster)"


def _exit_code(returncode: int) -> int:
    """A process killed by signal N reports -N; a container reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


@dataclass
class Failure:
    container: str
    exit_code: int | None
    reason: str
    message: str = ""


class PodRunner(threading.Thread):
    """One pod: volumes, init containers in order, then the containers together."""

    def __init__(self, sup: Supervisor, member: podspec.Member, manifest: dict[str, Any]) -> None:
        super().__init__(name=manifest["metadata"]["name"], daemon=True)
        self.sup, self.member, self.manifest = sup, member, manifest
        self.name_ = manifest["metadata"]["name"]
        self.dir = sup.job_dir / "pods" / self.name_
        self.fs = self.dir / "fs"
        self.phase = "Pending"
        self.failure: Failure | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
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

    def _status_of(self, name: str) -> dict[str, Any]:
        status = self.pod["status"]
        for cs in [*(status.get("initContainerStatuses") or []), *status["containerStatuses"]]:
            if cs["name"] == name:
                return cs
        raise KeyError(name)

    def _set_state(self, name: str, state: dict[str, Any], ready: bool = False) -> None:
        cs = self._status_of(name)
        cs["state"], cs["ready"] = state, ready

    # ------------------------------------------------------------------------------------- run

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug or an OS error must end the job with a reason, not hang it
            log.exception("pod %s", self.name_)
            self._fail(Failure("", None, "RunnerError", f"the local runner failed: {type(exc).__name__}: {exc}"))

    def _fail(self, failure: Failure) -> None:
        self.failure = failure
        self.phase = "Failed"
        self.pod.setdefault("status", {})["phase"] = "Failed"
        self.save()

    def _run(self) -> None:
        spec = self.manifest["spec"]
        paths = localpods.PathMap(localpods.pod_mounts(self.manifest, self.fs))
        problems = localpods.prepare_volumes(self.manifest, self.fs, self.sup.namespace)
        base = self.sup.base_env(paths, self.member)
        for init in spec.get("initContainers") or []:
            run = localpods.container_run(init, self.sup.namespace, paths, base, self.sup.extra_env)
            if problems or run.problems:
                message = "; ".join(problems + run.problems)
                self._set_state(init["name"], {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
                self._fail(Failure(init["name"], None, "CreateContainerConfigError", message))
                return
            code = self._run_one(run)
            if code is None:
                return  # stopped
            if code != 0:
                self._fail(Failure(init["name"], code, "Error"))
                return
            if init["name"] == podspec.FETCH_CODE_CONTAINER:
                self._map_code_paths(paths)
        runs = [localpods.container_run(c, self.sup.namespace, paths, base, self.sup.extra_env)
                for c in spec["containers"]]
        problems += [p for r in runs for p in r.problems]
        if problems:
            message = "; ".join(problems)
            self._set_state(runs[0].name, {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
            self._fail(Failure(runs[0].name, None, "CreateContainerConfigError", message))
            return
        for run in runs:
            self._start(run)
        self.phase = "Running"
        self.pod["status"]["phase"] = "Running"
        self.save()
        codes = {run.name: self._wait(run.name) for run in runs}
        if any(code is None for code in codes.values()):
            return  # stopped
        bad = [(name, code) for name, code in codes.items() if code != 0]
        if bad:
            # The trainer's own failure is the interesting one; the sync container only follows it.
            bad.sort(key=lambda nc: nc[0] != podspec.MAIN_CONTAINER)
            self._fail(Failure(bad[0][0], bad[0][1], "Error"))
            return
        self.phase = "Succeeded"
        self.pod["status"]["phase"] = "Succeeded"
        self.save()

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
            if self.sup.stopping.is_set():
                return
            proc = localpods.start(run, log_path)
            self.procs[run.name] = proc
        self.pod["local"]["pids"][run.name] = proc.pid
        self._set_state(run.name, {"running": {"startedAt": now_stamp()}}, ready=True)
        self.save()

    def _wait(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        started = self._status_of(name)["state"].get("running", {}).get("startedAt")
        returncode = proc.wait()
        if self.sup.stopping.is_set():
            return None
        code = _exit_code(returncode)
        self._set_state(name, {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                              "startedAt": started, "finishedAt": now_stamp()}})
        self.pod["local"]["pids"].pop(name, None)
        self.save()
        return code

    def _run_one(self, run: localpods.ContainerRun) -> int | None:
        self._start(run)
        return self._wait(run.name)

    def stop(self) -> None:
        """SIGTERM every container's process group, then SIGKILL what is left after the grace period."""
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            kill_group(proc.pid, signal.SIGKILL)


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.runner = read_json(job_dir / "runner.json")
        self.namespace = Namespace(Path(self.runner["workdir"]), self.runner["namespace"])
        self.job_file = job_dir / "job.json"
        self.stopping = threading.Event()
        self.cancelled = False
        self.pods: list[PodRunner] = []
        self.extra_env: dict[str, str] = dict(self.runner.get("env") or {})

    # ---------------------------------------------------------------------------------- status

    def update_status(self, change: Any) -> dict[str, Any]:
        def apply(job: dict[str, Any]) -> None:
            status = job.setdefault("status", {})
            change(status)
            status["observedGeneration"] = job["metadata"].get("generation", 1)

        return update_json(self.job_file, apply)

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
        job_data = read_json(self.job_file)
        job = tj.TrainJob.model_validate({k: v for k, v in job_data.items() if k != "status"})
        if job.spec.suspend:
            self.update_status(suspended_status)
            self._delete_pod_records()
            return 0

        def started(status: dict[str, Any]) -> None:
            if status.get("phase") == "Suspended":
                set_condition(status, "Suspended", False, "Resumed", "the job was resumed")
            message = _created_message(job.spec)
            members = podspec.members(job.spec)
            status.update(phase="Pending", reason="PodsCreated",
                          message=f"created {len(members)} pod{'s' if len(members) != 1 else ''}; "
                                  "waiting for them to start",
                          startTime=now_stamp(), restarts=0,
                          workers={"pending": podspec.worker_count(job.spec), "active": 0, "succeeded": 0,
                                   "failed": 0})
            status.pop("completionTime", None)
            set_condition(status, "Created", True, "PodsCreated", message)

        self.update_status(started)
        settings = podspec.PodSettings(dataspace_endpoint=self.runner["dataspace"]["endpoint"],
                                       dataspace_bucket=self.runner["dataspace"]["bucket"])
        deadline = job.spec.active_deadline_seconds
        uid = job_data["metadata"].get("uid")
        for member in podspec.members(job.spec):
            manifest = podspec.build_pod(job, member, settings, owner_uid=uid, deadline_seconds=deadline)
            self._localize_dmlc(manifest)
            runner = PodRunner(self, member, manifest)
            runner.write_initial()
            self.pods.append(runner)
        for runner in self.pods:
            runner.start()
        return self._watch(job, deadline)

    def _localize_dmlc(self, manifest: dict[str, Any]) -> None:
        """ps-lite's scheduler address: the pod's DNS name (headless Service) becomes this machine."""
        port = self.runner.get("dmlc_port")
        for container in manifest["spec"]["containers"]:
            for var in container.get("env") or []:
                if var["name"] == "DMLC_PS_ROOT_URI":
                    var["value"] = "127.0.0.1"
                elif var["name"] == "DMLC_PS_ROOT_PORT" and port:
                    var["value"] = str(port)

    def _watch(self, job: tj.TrainJob, deadline: int | None) -> int:
        start = time.monotonic()
        running_reported = False
        total = podspec.worker_count(job.spec)
        while True:
            if self.stopping.is_set():
                return self._on_cancel()
            workers = [p for p in self.pods if p.member.role == "worker"]
            failed = [p for p in self.pods if p.failure is not None]
            if failed:
                return self._finish_failed(job, sorted(failed, key=lambda p: p.member.role != "worker")[0])
            if all(p.phase == "Succeeded" for p in workers):
                return self._finish_succeeded(job)
            if deadline is not None and time.monotonic() - start >= deadline:
                message = f"the job ran longer than activeDeadlineSeconds ({deadline} s); its pods were stopped"
                return self._finish(job, "Failed", "DeadlineExceeded", message, stop=True)
            if not running_reported and all(p.phase in ("Running", "Succeeded") for p in self.pods):
                running_reported = True
                message = f"{total}/{total} worker{'s' if total != 1 else ''} running"

                def running(status: dict[str, Any], message: str = message) -> None:
                    status.update(phase="Running", reason="AllWorkersRunning", message=message)
                    set_condition(status, "Running", True, "AllWorkersRunning", message)
                    set_condition(status, "Restarting", False, "Running", message)

                self.update_status(running)
            self._count()
            time.sleep(POLL_SECONDS)

    def _counts(self) -> dict[str, int]:
        counts = {"pending": 0, "active": 0, "succeeded": 0, "failed": 0}
        for p in self.pods:
            if p.member.role != "worker":
                continue
            key = {"Running": "active", "Succeeded": "succeeded", "Failed": "failed"}.get(p.phase, "pending")
            counts[key] += 1
        return counts

    def _count(self) -> None:
        counts = self._counts()
        current = (read_json(self.job_file).get("status") or {}).get("workers")
        if current != counts:
            self.update_status(lambda status: status.update(workers=counts))

    def _stop_pods(self) -> None:
        self.stopping.set()
        for p in self.pods:
            p.stop()
        for p in self.pods:
            p.join(timeout=STOP_GRACE_SECONDS)

    def _finish(self, job: tj.TrainJob, phase: str, reason: str, message: str, stop: bool = False,
                extra: dict[str, Any] | None = None) -> int:
        if stop:
            self._stop_pods()
        counts = self._counts()

        def finished(status: dict[str, Any]) -> None:
            status.update(phase=phase, reason=reason, message=message, completionTime=now_stamp(), workers=counts)
            status.update(extra or {})
            set_condition(status, phase, True, reason, message)
            set_condition(status, "Running", False, reason, message)
            set_condition(status, "Restarting", False, reason, message)

        self.update_status(finished)
        log.info("job %s %s: %s", job.metadata.name, phase, message)
        return 0 if phase == "Succeeded" else 1

    def _finish_succeeded(self, job: tj.TrainJob) -> int:
        # Parameter servers and the scheduler only serve the workers: stop them, as cleanPodPolicy does.
        others = [p for p in self.pods if p.member.role != "worker"]
        if others:
            self.stopping.set()
            for p in others:
                p.stop()
        total = podspec.worker_count(job.spec)
        message = f"{total}/{total} worker{'s' if total != 1 else ''} succeeded"
        extra: dict[str, Any] = {}
        out = job.spec.data_space.output
        if out is not None:
            extra["outputs"] = {"dataset": out.name, "type": out.type}
            message += f"; outputs synced to dataset {out.name} ({out.type})"
        return self._finish(job, "Succeeded", "AllWorkersSucceeded", message, extra=extra)

    def _finish_failed(self, job: tj.TrainJob, pod: PodRunner) -> int:
        f = pod.failure
        assert f is not None
        short = pod.member.short()
        if f.exit_code is None:
            reason, message = f.reason, f"{short} failed ({f.reason})" + (f": {f.message}" if f.message else "")
        else:
            where = "" if f.container in ("", podspec.MAIN_CONTAINER) else f" in {f.container}"
            reason = "WorkerFailed" if pod.member.role == "worker" else "ParameterServerFailed"
            message = f"{short} exited with code {f.exit_code}{where}"
        tail = log_tail(pod.dir / "logs" / f"{f.container}.log") if f.container else ""
        failure = {"pod": pod.name_, "reason": f.reason, "message": message, "logTail": tail}
        if f.exit_code is not None:
            failure["exitCode"] = f.exit_code
        return self._finish(job, "Failed", reason, message + NO_RESTART, stop=True, extra={"lastFailure": failure})

    def _on_cancel(self) -> int:
        self._stop_pods()
        self.update_status(suspended_status)
        self._delete_pod_records()
        return 0

    def _delete_pod_records(self) -> None:
        """The operator deletes a suspended job's pods; here their records go, their logs and files stay."""
        for pod_json in (self.job_dir / "pods").glob("*/pod.json"):
            pod_json.unlink(missing_ok=True)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.cancelled = True
        self.stopping.set()


def _created_message(spec: tj.TrainJobSpec) -> str:
    count = podspec.worker_count(spec)
    parts = [f"{count} worker{'s' if count != 1 else ''}"]
    if podspec.uses_parameter_servers(spec):
        servers = spec.parameter_servers or count
        parts.append(f"{servers} parameter server{'s' if servers != 1 else ''} and a scheduler")
    return "created " + ", ".join(parts)


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
        message = f"the local runner failed: {type(exc).__name__}: {exc}"
        sup._stop_pods()
        sup.update_status(lambda status: (status.update(phase="Failed", reason="RunnerError", message=message,
                                                        completionTime=now_stamp()),
                                          set_condition(status, "Failed", True, "RunnerError", message)))
        return 1


if __name__ == "__main__":
    sys.exit(main())
