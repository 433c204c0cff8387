"""The local cluster behind `traincli`: the ``aidi.cluster.client.JobClient`` interface, on a work folder.

``traincli submit | list | status | logs | cancel | resume | wait | delete`` and ``aidi.cluster.jobs`` call
these exactly as they call the Kubernetes client; where the API server would store an object, this
writes a file (``aidi.local.store``), and where the operator would react to a change, this starts or stops
the job's supervisor process (``aidi.local.supervisor``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aidi.cluster.gpucluster import ResolvedCluster
from aidi.cluster.kube import DEFAULT_NAMESPACE, ConflictError
from aidi.errors import NotFoundError
from aidi.jobs.lifecycle import FINISHED
from aidi.local import devices, jobfile
from aidi.local.pods import STOP_GRACE_SECONDS, kill_group
from aidi.local.store import Namespace, default_workdir, merge_patch, read_json, update_json, write_json

log = logging.getLogger(__name__)

DATASPACE_SECRET = "aidi-dataspace"
FOLLOW_POLL_SECONDS = 0.3


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent (the submitting process) has not reaped it


class LocalJobClient:
    """TrainJobs, their Secrets and their pods in one namespace of the local cluster."""

    def __init__(self, workdir: Path, namespace: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.ns = Namespace(workdir, namespace)
        self.env = dict(env or {})

    @classmethod
    def for_cluster(cls, resolved: ResolvedCluster, namespace: str | None = None) -> LocalJobClient:
        cluster = resolved.cluster
        workdir = Path(cluster.workdir).expanduser() if cluster.workdir else default_workdir()
        if not workdir.is_absolute():  # relative to the config file, like a kubeconfig's paths
            workdir = resolved.path.parent / workdir
        return cls(workdir.resolve(), namespace or cluster.namespace or DEFAULT_NAMESPACE, cluster.env)

    def close(self) -> None:
        pass

    # ----------------------------------------------------------------------------------- TrainJobs

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        from aidi.dataspace import DataspaceConfig

        name = manifest["metadata"]["name"]
        job_file = self.ns.job_file(name)
        if job_file.exists():
            raise ConflictError(f"a TrainJob named {name!r} already exists in namespace {self.namespace}; delete it "
                                f"with `traincli delete {name}` or choose another JOB_NAME")
        job = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace,
                                        "uid": str(uuid.uuid4()), "generation": 1,
                                        "creationTimestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
        # The pods reach the dataspace the submitter uses (hitc's config), as the Secret aidi-dataspace
        # gives a cluster's pods theirs.
        config = DataspaceConfig.load()
        self.ns.put_secret(DATASPACE_SECRET, {"accessKey": config.access_key, "secretKey": config.secret_key})
        gpus = int((manifest.get("spec") or {}).get("gpusPerWorker", 0) or 0)
        runner = {"workdir": str(self.workdir), "namespace": self.namespace, "job": name,
                  "dataspace": {"endpoint": config.endpoint, "bucket": config.bucket}, "env": self.env,
                  "python": sys.executable, "ctx": devices.ctx_for(gpus), "dmlc_port": devices.free_port()}
        write_json(self.ns.job_dir(name) / "runner.json", runner)
        write_json(job_file, job)
        self._start_supervisor(name)
        return self.get_job(name)

    def _start_supervisor(self, name: str) -> int:
        job_dir = self.ns.job_dir(name)
        with open(job_dir / "supervisor.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "aidi.local.supervisor", str(job_dir)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=job_dir)
        update_json(job_dir / "runner.json", lambda r: r.update(pid=proc.pid))
        return proc.pid

    def _supervisor_pid(self, name: str) -> int | None:
        try:
            return read_json(self.ns.job_dir(name) / "runner.json").get("pid")
        except FileNotFoundError:
            return None

    def get_job(self, name: str) -> dict[str, Any]:
        job = self.ns.read_job(name)
        status = job.get("status") or {}
        pid = self._supervisor_pid(name)
        if pid and status.get("phase") not in (*FINISHED, "Suspended") and not _alive(pid):
            job = self._runner_lost(name, pid)
        return job

    def _runner_lost(self, name: str, pid: int) -> dict[str, Any]:
        """The supervisor died (killed, machine rebooted): stop what it left running and say so."""
        self._kill_containers(name)
        message = (f"the local runner process (pid {pid}) is gone, so the job cannot finish; its log is "
                   f"{self.ns.job_dir(name) / 'supervisor.log'}. Submit the job again")

        def lost(job: dict[str, Any]) -> None:
            if (job.get("status") or {}).get("phase") not in (*FINISHED, "Suspended"):
                jobfile.fail(job, "RunnerLost", message, dt.datetime.now(dt.UTC))

        return update_json(self.ns.job_file(name), lost)

    def job_exists(self, name: str) -> bool:
        return self.ns.job_file(name).is_file()

    def list_jobs(self) -> list[dict[str, Any]]:
        return [self.get_job(name) for name in self.ns.job_names()]

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        before = self.get_job(name)
        was_suspended = bool((before.get("spec") or {}).get("suspend"))

        def apply(job: dict[str, Any]) -> None:
            old_spec = dict(job.get("spec") or {})
            merge_patch(job, patch)
            if job.get("spec") != old_spec:
                job["metadata"]["generation"] = job["metadata"].get("generation", 1) + 1

        job = update_json(self.ns.job_file(name), apply)
        suspended = bool((job.get("spec") or {}).get("suspend"))
        phase = (job.get("status") or {}).get("phase")
        if suspended and not was_suspended:
            self._stop_supervisor(name)
        elif was_suspended and not suspended and phase not in FINISHED:
            self._start_supervisor(name)
        return self.get_job(name)

    def _stop_supervisor(self, name: str) -> None:
        """SIGTERM the supervisor (it stops the pods and writes Suspended); do it ourselves if it cannot."""
        pid = self._supervisor_pid(name)
        if _alive(pid):
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 2 * STOP_GRACE_SECONDS + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                kill_group(pid, signal.SIGKILL)
        self._kill_containers(name)
        if (self.ns.read_job(name).get("status") or {}).get("phase") != "Suspended" and \
                (self.ns.read_job(name).get("spec") or {}).get("suspend"):
            update_json(self.ns.job_file(name), lambda job: jobfile.suspend(job, dt.datetime.now(dt.UTC)))
            for pod_json in (self.ns.job_dir(name) / "pods").glob("*/pod.json"):
                pod_json.unlink(missing_ok=True)

    def _kill_containers(self, name: str) -> None:
        for pod_json in (self.ns.job_dir(name) / "pods").glob("*/pod.json"):
            try:
                pids = (read_json(pod_json).get("local") or {}).get("pids") or {}
            except FileNotFoundError:
                continue
            for pid in pids.values():
                kill_group(int(pid), signal.SIGKILL)

    def delete_job(self, name: str) -> None:
        self.ns.read_job(name)  # NotFoundError when there is none
        pid = self._supervisor_pid(name)
        if _alive(pid):
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        self._kill_containers(name)
        for secret in self.ns.secrets_owned_by(name):  # garbage collection by owner references
            self.ns.delete_secret(secret)
        self.ns.remove_job(name)

    # ---------------------------------------------------------------------------------- the Secret

    def put_password_secret(self, secret_name: str, job_name: str, password: str,
                            owner: dict[str, Any] | None = None) -> None:
        self.ns.put_secret(secret_name, {"password": password}, labels={"aidi.io/job": job_name})
        if owner is not None:
            self._own_secret(secret_name, owner)

    def _own_secret(self, secret_name: str, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        owner = {"apiVersion": job.get("apiVersion"), "kind": job.get("kind"), "name": meta["name"],
                 "uid": meta.get("uid"), "controller": True}
        path = self.ns.secret_file(secret_name)
        update_json(path, lambda s: s.setdefault("metadata", {}).update(ownerReferences=[owner]))
        os.chmod(path, 0o600)

    def secret_exists(self, secret_name: str) -> bool:
        return self.ns.read_secret(secret_name) is not None

    def delete_secret(self, secret_name: str) -> bool:
        return self.ns.delete_secret(secret_name)

    # ---------------------------------------------------------------------------------------- pods

    def _pod_dirs(self) -> dict[str, Path]:
        found = {}
        for job in self.ns.job_names():
            for pod_json in (self.ns.job_dir(job) / "pods").glob("*/pod.json"):
                found[pod_json.parent.name] = pod_json.parent
        return found

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        self.get_job(name)  # NotFoundError for a missing job, as on a cluster; notices a lost runner
        pods = []
        for pod_json in sorted((self.ns.job_dir(name) / "pods").glob("*/pod.json")):
            try:
                pod = read_json(pod_json)
            except FileNotFoundError:
                continue
            pod.pop("local", None)
            pods.append(pod)
        return pods

    def _log_path(self, pod: str, container: str | None) -> Path:
        folder = self._pod_dirs().get(pod)
        if folder is None:
            raise NotFoundError(f"pod {pod} is gone, or not started yet")
        return folder / "logs" / f"{container or 'trainer'}.log"

    def _terminated(self, log_path: Path, container: str | None) -> bool:
        try:
            pod = read_json(log_path.parent.parent / "pod.json")
        except FileNotFoundError:
            return True  # the pod was deleted (cancel)
        status = pod.get("status") or {}
        if status.get("phase") in FINISHED:
            return True
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            if cs["name"] == (container or "trainer"):
                return "terminated" in (cs.get("state") or {})
        return True

    def pod_log(self, pod: str, container: str | None, tail: int | None = None, previous: bool = False) -> str:
        if previous:
            raise NotFoundError(f"pod {pod} has no previous run: the local runner does not restart containers")
        path = self._log_path(pod, container)
        if not path.is_file():
            raise NotFoundError(f"container {container or 'trainer'} of pod {pod} has not started yet (no log); "
                                f"`traincli status` shows where the pod is")
        text = path.read_text(encoding="utf-8", errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        return text

    def stream_log(self, pod: str, container: str | None, tail: int | None = None) -> Iterator[bytes]:
        """Follow the log until the container ends (waiting for it to start when it has not yet)."""
        path = self._log_path(pod, container)
        while not path.is_file():
            if self._terminated(path, container):
                return
            time.sleep(FOLLOW_POLL_SECONDS)
        with open(path, "rb") as fh:
            if tail is not None:
                lines = fh.read().splitlines(keepends=True)
                yield b"".join(lines[-tail:]) if tail > 0 else b""
            while True:
                chunk = fh.read(65536)
                if chunk:
                    yield chunk
                    continue
                if self._terminated(path, container):
                    rest = fh.read()
                    if rest:
                        yield rest
                    return
                time.sleep(FOLLOW_POLL_SECONDS)
