"""A stand-in kubelet that runs the pods bound to its nodes as podman containers.

For the container tests (tests/test_containers_e2e.py) and as a developer tool beside a control plane
without nodes (../shared/k8s): it registers Nodes with ``nvidia.com/gpu`` capacity and keeps them Ready
(``e2e.Kubelet``), lets the real scheduler bind pods to them, and runs each bound pod as a kubelet does:

- init containers one after another, then the containers together; ``restartPolicy: Never``;
- volumes: ``emptyDir`` (a host folder per pod, mode 0777 as the kubelet makes them), ``secret`` (the
  Secret's keys, or its ``items``, written with ``defaultMode``), ``configMap`` and ``projected`` (the
  ServiceAccount token volume the admission adds: a TokenRequest bound to the pod), mounted as
  ``volumeMounts`` say; ``fsGroup`` owns them and may read them (write, in an emptyDir), as on a node;
- ``command``/``args`` (``$(VAR)`` expanded), ``workingDir``, ``env`` (values, ``secretKeyRef``, ``fieldRef``;
  passed in a 0600 file, never on a command line), the termination message file (``terminationMessagePath``,
  ``FallbackToLogsOnError``) read into the container's terminated state, pod and container
  ``securityContext`` (``runAsUser``, ``runAsGroup``, ``fsGroup``, ``runAsNonRoot`` checked against the
  image, ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation: false``, ``capabilities``), CPU
  and memory limits (on cgroup v1 the memory limit sits on a parent cgroup per container, as on a node's
  pod cgroup, so that an OOM kill podman misses there is still reported), ``activeDeadlineSeconds``;
- status as a kubelet reports it: phases, conditions, init and container states with exit codes and
  reasons (``Completed``, ``Error``, ``OOMKilled``, ``DeadlineExceeded``);
- a pod marked for deletion: its containers get SIGTERM and its grace period, are removed, then the pod
  is deleted (grace period 0).

Networking is the host's (``--network host``): pods reach the API server and the S3 server on loopback,
and each pod's hosts file maps every pod of its namespace that has ``hostname``/``subdomain`` (the names a
headless Service gives) to 127.0.0.1. So two pods cannot listen on the same port, unlike on a node.
Images must be in podman's local storage (``make images``); nothing is pulled. Container logs are kept
in the kubelet's folder (``<ns>_<pod>/<container>.log``); ``kubectl logs`` is not served.

    python -m tests.support.podman_kubelet --kubeconfig KUBECONFIG [--nodes 1] [--gpus 8] [--dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aidi.jobs.lifecycle import timestamp
from tests.support import containers, e2e

NODE_LABEL = "aidi.io/podman-kubelet-node"  # on every container, so that leftovers can be found
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the API server's default terminationMessagePath
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"  # the kubelet's words
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _now() -> str:
    return timestamp(dt.datetime.now(dt.UTC))


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others left as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def _quantity(value: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(value))


def _own_by_fs_group(path: Path, gid: int, read_only: bool) -> None:
    """What a kubelet does to a volume for the pod's fsGroup: the group owns everything and may read it (a
    Secret's owner-only 0400 file becomes 0440), or also write it in a writable volume; folders are setgid."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, -1, gid)
        mask = 0o440 if read_only else 0o660
        if p.is_dir():
            mask |= 0o110 | stat.S_ISGID
        p.chmod(stat.S_IMODE(p.stat().st_mode) | mask)


class ConfigError(Exception):
    """What a kubelet reports as CreateContainerConfigError: the pod cannot start as written."""


class PodRunner(threading.Thread):
    """One bound pod, from its first init container to its last status."""

    def __init__(self, kubelet: PodmanKubelet, pod: Any) -> None:
        self.kubelet = kubelet
        self.ns, self.pod_name = pod.metadata.namespace, pod.metadata.name
        self.uid = pod.metadata.uid
        self.pod = kubelet._core.api_client.sanitize_for_serialization(pod)
        super().__init__(name=f"pod-{self.ns}-{self.pod_name}", daemon=True)
        self.dir = kubelet.dir / f"{self.ns}_{self.pod_name}_{self.uid[:8]}"
        self.stopping = threading.Event()
        self.started_at = _now()
        self.init_status: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.container_names: dict[str, str] = {}  # container → podman name
        self.cgroups: list[str] = []  # the memory-limit parents (_memory_cgroup), removed with the pod
        self.memory_cgroups: dict[str, Path] = {}

    # ------------------------------------------------------------------------------------- status

    def _report(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        spec = self.pod["spec"]
        inits_done = len(self.init_status) == len(spec.get("initContainers") or []) and all(
            s["state"].get("terminated", {}).get("exitCode") == 0 for s in self.init_status)
        ready = phase == "Running" and all(s.get("ready") for s in self.status)
        now = _now()

        def cond(kind: str, ok: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}

        status: dict[str, Any] = {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.started_at,
            "conditions": [cond("PodScheduled", True), cond("Initialized", inits_done),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": self.status or [self._waiting(c, "PodInitializing") for c in spec["containers"]],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = self.init_status
        if phase in ("Succeeded", "Failed"):
            self._save_logs()  # before the status says so: whoever waits for the phase may read them
        if reason:
            status["reason"] = reason
        if message:
            status["message"] = message
        from kubernetes.client.rest import ApiException

        with contextlib.suppress(ApiException):  # the pod is gone: nothing to report to
            self.kubelet._core.patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})

    @staticmethod
    def _waiting(container: dict[str, Any], reason: str, message: str | None = None) -> dict[str, Any]:
        state: dict[str, Any] = {"reason": reason}
        if message:
            state["message"] = message
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "started": False, "state": {"waiting": state}}

    def _inspect(self, container: dict[str, Any]) -> dict[str, Any]:
        """The container's status from podman's view of it."""
        name = self.container_names[container["name"]]
        done = containers.podman("inspect", "--format", "json", name, timeout=60)
        info = json.loads(done.stdout)[0] if done.returncode == 0 else {}
        st = info.get("State") or {}
        base = {"name": container["name"], "image": container["image"], "imageID": info.get("Image", ""),
                "containerID": f"podman://{info.get('Id', '')}", "restartCount": 0}
        if st.get("Running"):
            running = {"startedAt": self._time(st["StartedAt"])}
            return base | {"ready": True, "started": True, "state": {"running": running}}
        if st.get("Status") in ("created", "configured", "initialized", None):
            return base | {"ready": False, "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
        code = int(st.get("ExitCode", 1))
        oom = st.get("OOMKilled") or self.oom_killed(container["name"], code)
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        if container["name"] in self.kubelet.deadline_killed.get(self.uid, set()):
            reason = "DeadlineExceeded"
        terminated = {"exitCode": code, "reason": reason, "startedAt": self._time(st.get("StartedAt")),
                      "finishedAt": self._time(st.get("FinishedAt"))}
        message = self._termination_message(container, code)
        if message:
            terminated["message"] = message
        return base | {"ready": False, "started": False, "state": {"terminated": terminated}}

    def _termination_file(self, container: dict[str, Any]) -> Path:
        return self.dir / f"{container['name']}.termination-log"

    def _termination_message(self, container: dict[str, Any], exit_code: int) -> str:
        """As a kubelet reads it: the file at terminationMessagePath (at most 4096 bytes), or with
        ``FallbackToLogsOnError`` and an empty file, a failed container's last 80 log lines (2048 bytes)."""
        try:
            text = self._termination_file(container).read_bytes()[:4096].decode(errors="replace")
        except OSError:
            text = ""
        if not text and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            done = containers.podman("logs", "--tail", "80", self.container_names[container["name"]], timeout=60)
            text = (done.stdout + done.stderr)[-2048:]
        return text

    @staticmethod
    def _time(value: str | None) -> str:
        if not value or value.startswith("0001"):
            return _now()
        # podman: 2026-12-04T21:30:00.123456789Z or with an offset; the API wants whole seconds in UTC.
        text = re.sub(r"(\.\d+)", "", value.replace(" +0000 UTC", "Z").split(" m=")[0])
        try:
            return timestamp(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC))
        except ValueError:
            return _now()

    # ------------------------------------------------------------------------------------- the pod

    def run(self) -> None:
        try:
            self._run()
        except ConfigError as exc:
            self._report("Pending", message=str(exc))
        except Exception as exc:  # reported as the kubelet would: a failed pod with the reason
            self.kubelet.errors.append(f"{self.ns}/{self.pod_name}: {type(exc).__name__}: {exc}"[:500])
            self._report("Failed", reason="StandInKubeletError", message=str(exc)[:500])
        finally:
            self._save_logs()

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.dir.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(spec)
        self._report("Pending")
        deadline = spec.get("activeDeadlineSeconds")
        end = time.monotonic() + deadline if deadline else None
        for init in spec.get("initContainers") or []:
            self.init_status.append(self._waiting(init, "PodInitializing"))
        for i, init in enumerate(spec.get("initContainers") or []):
            if self.stopping.is_set():
                return
            self._start(init, volumes)
            self.init_status[i] = self._inspect(init)
            self._report("Pending")
            while not self.stopping.is_set():
                self.init_status[i] = self._inspect(init)
                if "terminated" in self.init_status[i]["state"]:
                    break
                if end and time.monotonic() > end:
                    self._deadline([init])
                    self.init_status[i] = self._inspect(init)
                    self._report("Failed", "DeadlineExceeded", DEADLINE_MESSAGE)
                    return
                time.sleep(0.5)
            if self.stopping.is_set():
                return
            if self.init_status[i]["state"]["terminated"]["exitCode"] != 0:
                self.status = [self._waiting(c, "PodInitializing") for c in spec["containers"]]
                self._report("Failed")
                return
        for c in spec["containers"]:
            self._start(c, volumes)
        while not self.stopping.is_set():
            self.status = [self._inspect(c) for c in spec["containers"]]
            states = [s["state"] for s in self.status]
            if all("terminated" in s for s in states):
                ok = all(s["terminated"]["exitCode"] == 0 for s in states)
                self._report("Succeeded" if ok else "Failed")
                return
            self._report("Running")
            if end and time.monotonic() > end:
                self._deadline(spec["containers"])
                self.status = [self._inspect(c) for c in spec["containers"]]
                self._report("Failed", "DeadlineExceeded", DEADLINE_MESSAGE)
                return
            time.sleep(1.0)

    def _deadline(self, specs: list[dict[str, Any]]) -> None:
        self.kubelet.deadline_killed.setdefault(self.uid, set()).update(c["name"] for c in specs)
        for c in specs:
            containers.podman("stop", "--time", "5", self.container_names[c["name"]], timeout=60)

    # ------------------------------------------------------------------------------------- volumes

    def _volumes(self, spec: dict[str, Any]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        for vol in spec.get("volumes") or []:
            path = self.dir / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                path.chmod(0o777)
            elif "secret" in vol:
                self._secret_volume(vol["secret"], path)
            elif "configMap" in vol:
                self._write_files(path, self._configmap_data(vol["configMap"]["name"]), vol["configMap"])
            elif "projected" in vol:  # the ServiceAccount admission's kube-api-access-* volume, among others
                self._projected_volume(vol["projected"], path)
            else:
                raise ConfigError(f"volume {vol['name']}: the stand-in kubelet runs emptyDir, secret, configMap "
                                  "and projected volumes only")
            if fs_group is not None:
                _own_by_fs_group(path, int(fs_group), read_only="emptyDir" not in vol)
            out[vol["name"]] = path
        return out

    def _secret_volume(self, source: dict[str, Any], path: Path) -> None:
        data = self._secret_data(source["secretName"], optional=bool(source.get("optional")))
        self._write_files(path, data, source)

    def _write_files(self, path: Path, data: dict[str, bytes], source: dict[str, Any],
                     default_mode: int | None = None) -> None:
        mode = int(source.get("defaultMode", default_mode if default_mode is not None else 0o644))
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                owner = source.get("name") or source.get("secretName")
                raise ConfigError(f"couldn't find key {item['key']} in {self.ns}/{owner}")
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
            target.chmod(int(item.get("mode", mode)))
        path.chmod(0o755)

    def _configmap_data(self, name: str) -> dict[str, bytes]:
        from kubernetes.client.rest import ApiException

        try:
            cm = self.kubelet._core.read_namespaced_config_map(name, self.ns)
        except ApiException as exc:
            raise ConfigError(f'configmap "{name}" not found') from exc
        return {k: v.encode() for k, v in (cm.data or {}).items()}

    def _projected_volume(self, source: dict[str, Any], path: Path) -> None:
        mode = int(source.get("defaultMode", 0o644))
        for part in source.get("sources") or []:
            if "serviceAccountToken" in part:
                sat = part["serviceAccountToken"]
                request = {"spec": {"audiences": [sat["audience"]] if sat.get("audience") else None,
                                    "expirationSeconds": int(sat.get("expirationSeconds", 3607)),
                                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.pod_name,
                                                       "uid": self.uid}}}
                account = self.pod["spec"].get("serviceAccountName") or "default"
                token = self.kubelet._core.create_namespaced_service_account_token(account, self.ns, request)
                self._write_files(path, {"token": token.status.token.encode()},
                                  {"items": [{"key": "token", "path": sat["path"]}]}, mode)
            elif "configMap" in part:
                self._write_files(path, self._configmap_data(part["configMap"]["name"]), part["configMap"], mode)
            elif "secret" in part:
                data = self._secret_data(part["secret"]["name"], optional=bool(part["secret"].get("optional")))
                self._write_files(path, data, part["secret"], mode)
            elif "downwardAPI" in part:
                data, items = {}, []
                for item in part["downwardAPI"].get("items") or []:
                    data[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
                    items.append({"key": item["path"], "path": item["path"]})
                self._write_files(path, data, {"items": items}, mode)
            else:
                raise ConfigError(f"projected volume source {sorted(part)} is not run by the stand-in kubelet")

    def _secret_data(self, name: str, optional: bool = False) -> dict[str, bytes]:
        from kubernetes.client.rest import ApiException

        try:
            secret = self.kubelet._core.read_namespaced_secret(name, self.ns)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise ConfigError(f'secret "{name}" not found') from exc
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    # ------------------------------------------------------------------------------------- containers

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = _expand(e["value"], env)
                continue
            source = e.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self._secret_data(ref["name"], optional=bool(ref.get("optional")))
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise ConfigError(f'couldn\'t find key {ref["key"]} in Secret {self.ns}/{ref["name"]}')
            elif "fieldRef" in source:
                env[e["name"]] = self._field(source["fieldRef"]["fieldPath"])
            elif e.get("name") and not source:
                env[e["name"]] = ""
            else:
                raise ConfigError(f"env {e['name']}: only value, secretKeyRef and fieldRef are supported here")
        return env

    def _field(self, path: str) -> str:
        """A downward API field (env fieldRef, downwardAPI volume items)."""
        meta, spec = self.pod["metadata"], self.pod["spec"]
        fields = {"metadata.name": self.pod_name, "metadata.namespace": self.ns, "metadata.uid": self.uid,
                  "spec.nodeName": spec.get("nodeName", ""), "status.podIP": "127.0.0.1",
                  "status.hostIP": "127.0.0.1", "spec.serviceAccountName": spec.get("serviceAccountName", "")}
        label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if label:
            return str((meta.get(label.group(1)) or {}).get(label.group(2), ""))
        if path in fields:
            return fields[path]
        raise ConfigError(f"fieldRef {path} is not supported by the stand-in kubelet")

    def _hosts(self) -> list[str]:
        """The names a headless Service gives the namespace's pods with hostname and subdomain."""
        args: list[str] = []
        for pod in self.kubelet._core.list_namespaced_pod(self.ns).items:
            host, sub = pod.spec.hostname, pod.spec.subdomain
            if host and sub:
                for name in (f"{host}.{sub}", f"{host}.{sub}.{self.ns}", f"{host}.{sub}.{self.ns}.svc",
                             f"{host}.{sub}.{self.ns}.svc.cluster.local"):
                    args += ["--add-host", f"{name}:127.0.0.1"]
        return args

    def _security(self, container: dict[str, Any], image: str) -> list[str]:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        args: list[str] = []
        user, group = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot"):
            if user is None:
                done = containers.podman("image", "inspect", "--format", "{{.Config.User}}", image, timeout=60)
                image_user = done.stdout.strip().split(":")[0]
                if not image_user.isdigit():
                    raise ConfigError("container has runAsNonRoot and image has non-numeric user "
                                      f"({image_user or 'root'}), cannot verify user is non-root")
                if int(image_user) == 0:
                    raise ConfigError("container's runAsUser breaks non-root policy")
            elif int(user) == 0:
                raise ConfigError("container's runAsUser breaks non-root policy")
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else 0}"]
        for g in [*(pod_sc.get("supplementalGroups") or []), pod_sc.get("fsGroup")]:
            if g is not None:
                args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            # As on a node: nothing writable but the volumes (podman would add tmpfs on /tmp, /run).
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap.lower()]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap.lower()]
        if sc.get("privileged"):
            raise ConfigError("privileged containers are not run by the stand-in kubelet")
        return args

    def _start(self, container: dict[str, Any], volumes: dict[str, Path]) -> None:
        name = f"k8s_{container['name']}_{self.pod_name}_{self.ns}_{self.uid[:8]}"
        self.container_names[container["name"]] = name
        image = container["image"]
        if containers.podman("image", "exists", image, timeout=60).returncode != 0:
            raise ConfigError(f"image {image} is not in podman's local storage (make images); nothing is pulled")
        env = self._env(container)
        env_file = self.dir / f"{container['name']}.env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            for key, value in env.items():
                if "\n" in value:
                    raise ConfigError(f"env {key}: values with newlines are not supported by the stand-in kubelet")
                out.write(f"{key}={value}\n")
        args = ["create", "--name", name, "--label", f"{NODE_LABEL}={self.pod['spec'].get('nodeName', '')}",
                "--label", f"aidi.io/pod-uid={self.uid}", *containers.runtime_args(), "--pull", "never",
                "--network", "host", "--hostname", self.pod["spec"].get("hostname") or self.pod_name,
                "--env-file", str(env_file), *self._hosts(), *self._security(container, image)]
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise ConfigError(f"container {container['name']}: volumeMount {mount['name']} names no volume")
            source = volumes[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            args += ["-v", f"{source}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
        # The termination message file: writable by any user, whatever the root filesystem, as a kubelet makes it.
        message_file = self._termination_file(container)
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        args += ["-v", f"{message_file}:{container.get('terminationMessagePath') or TERMINATION_MESSAGE_PATH}:rw"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "cpu" in limits:
            args += ["--cpus", f"{_quantity(str(limits['cpu'])):g}"]
        if "memory" in limits:
            memory = int(_quantity(str(limits["memory"])))
            parent = self._memory_cgroup(container["name"], memory)
            args += ["--cgroup-parent", parent] if parent else ["--memory", str(memory)]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        command = [_expand(c, env) for c in container.get("command") or []]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(image)
        args += [_expand(a, env) for a in container.get("args") or []]
        containers.podman(*args, timeout=120, check=True)
        containers.podman("start", name, timeout=120, check=True)

    def _memory_cgroup(self, container: str, limit: int) -> str | None:
        """On cgroup v1, a parent cgroup holding the memory limit, as a kubelet's pod cgroup does.

        There podman does not see the kernel's OOM kill (State.OOMKilled stays false); the parent outlives
        the container, and its failure count says whether the limit was hit. None on cgroup v2 or without
        the rights, where podman's own --memory and OOMKilled are used.
        """
        root = Path("/sys/fs/cgroup/memory")
        if not (root / "memory.limit_in_bytes").exists() or not os.access(root, os.W_OK):
            return None
        rel = f"aidi-podman-kubelet/{self.uid[:8]}-{container}"
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "memory.limit_in_bytes").write_text(str(limit))
        self.cgroups.append(rel)
        self.memory_cgroups[container] = root / rel
        return "/" + rel

    def oom_killed(self, container: str, exit_code: int) -> bool:
        """Killed by the kernel for its memory limit: SIGKILL's code with the limit's cgroup full."""
        cgroup = self.memory_cgroups.get(container)
        if cgroup is None or exit_code != 137:
            return False
        with contextlib.suppress(OSError, ValueError):
            return int((cgroup / "memory.failcnt").read_text()) > 0
        return False

    def stop(self, grace_seconds: int = 2) -> None:
        """The pod is being deleted: SIGTERM its containers together, SIGKILL what still runs after the grace
        period (they are removed at the end)."""
        self.stopping.set()
        if self.container_names:
            containers.podman("stop", "--time", str(grace_seconds), *self.container_names.values(),
                              timeout=grace_seconds + 60)

    def _save_logs(self) -> None:
        for cname, name in self.container_names.items():
            done = containers.podman("logs", name, timeout=60)
            with contextlib.suppress(OSError):
                (self.dir / f"{cname}.log").write_text(done.stdout + done.stderr)

    def remove(self, grace_seconds: int = 2) -> None:
        self.stop(grace_seconds)
        self.join(30)
        for name in self.container_names.values():
            containers.podman("rm", "-f", "--time", "0", name, timeout=60)
        for rel in self.cgroups:  # podman made the parent in every controller; empty now, deepest first
            for controller in Path("/sys/fs/cgroup").iterdir():
                path = controller / rel
                if path.is_dir():
                    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                    with contextlib.suppress(OSError):
                        path.rmdir()


class PodmanKubelet(e2e.Kubelet):
    """``e2e.Kubelet``'s nodes, whose bound pods run as podman containers (module docstring)."""

    def __init__(self, run: str, count: int = 1, gpus: int = e2e.GPUS_PER_NODE, directory: Path | None = None,
                 keep_logs: bool = False) -> None:
        super().__init__(run, count, gpus)
        self.dir = directory or Path(tempfile.mkdtemp(prefix="aidi-podman-kubelet-"))
        self.dir.chmod(0o755)  # volumes below are mounted into containers of other users
        self.keep_logs = keep_logs
        self.pods: dict[str, PodRunner] = {}  # by uid
        self.deadline_killed: dict[str, set[str]] = {}

    def confirm_deletions(self) -> None:
        """Each loop of the kubelet: start new bound pods, stop deleted ones, then confirm deletions."""
        seen: set[str] = set()
        for node in self.nodes:
            for pod in self._core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
                uid = pod.metadata.uid
                seen.add(uid)
                runner = self.pods.get(uid)
                if pod.metadata.deletion_timestamp is not None:
                    if runner is not None:
                        # The deletion's grace period (terminationGracePeriodSeconds, 30 by default): the
                        # checkpoint loop of a sync container makes its last copy in it.
                        grace = pod.metadata.deletion_grace_period_seconds
                        runner.remove(30 if grace is None else int(grace))
                elif runner is None and (pod.status.phase or "Pending") == "Pending":
                    runner = self.pods[uid] = PodRunner(self, pod)
                    runner.start()
        for uid in set(self.pods) - seen:  # deleted without us (force deletion): clean up
            self.pods.pop(uid).remove()
        super().confirm_deletions()

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, once its pod's runner has finished with it."""
        for runner in reversed(list(self.pods.values())):  # the latest pod of that name
            if (runner.ns, runner.pod_name) == (namespace, pod):
                path = runner.dir / f"{container}.log"
                return path.read_text(errors="replace") if path.exists() else ""
        return ""

    def container(self, namespace: str, pod: str, container: str) -> str | None:
        """The podman name of a container of the latest pod of that name, once it was created."""
        for runner in reversed(list(self.pods.values())):
            if (runner.ns, runner.pod_name) == (namespace, pod):
                return runner.container_names.get(container)
        return None

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for runner in list(self.pods.values()):
                runner.remove()
            for node in self.nodes:
                left = containers.podman("ps", "-aq", "--filter", f"label={NODE_LABEL}={node}",
                                         timeout=60).stdout.split()
                if left:
                    containers.podman("rm", "-f", "--time", "0", *left, timeout=120)
            if not self.keep_logs:
                shutil.rmtree(self.dir, ignore_errors=True)
            for controller in Path("/sys/fs/cgroup").glob("*/aidi-podman-kubelet"):
                with contextlib.suppress(OSError):  # another kubelet's pods may still be there
                    controller.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podman-kubelet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="an admin kubeconfig of the control plane")
    parser.add_argument("--nodes", type=int, default=1, help="how many Nodes to register (default 1)")
    parser.add_argument("--gpus", type=int, default=e2e.GPUS_PER_NODE, help="nvidia.com/gpu per Node (default 8)")
    parser.add_argument("--dir", type=Path, help="where volumes and container logs go (default: a temp folder)")
    parser.add_argument("--run", default="dev", help="the nodes' name part and label value (default dev)")
    args = parser.parse_args(argv)
    os.environ["AIDI_E2E_KUBECONFIG"] = args.kubeconfig
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    directory = args.dir.resolve() if args.dir else None
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
    with PodmanKubelet(args.run, args.nodes, args.gpus, directory, keep_logs=True) as kubelet:
        print(f"podman-kubelet: nodes {', '.join(kubelet.nodes)} (select them with "
              f"nodeSelector {e2e.POOL_LABEL}={args.run}); volumes and logs in {kubelet.dir}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
