"""A pod manifest (from ``aidi.jobs.podspec``, as the operator builds it) turned into local processes.

The pod's volumes become folders under ``<pod>/fs``, each at its mount path: ``/job/code`` is
``<pod>/fs/job/code``, ``/data_space/input`` is ``<pod>/fs/data_space/input``, and so on (``/dev/shm``
stays the host's). Because a container would see those paths and this machine does not have them,
every string a container is given — its command, args, working directory and environment values — has
each mount path rewritten to its folder, on path boundaries only; :func:`rewrite_code_files` does the
same in the text files of the unpacked code package (configs such as ``datasets.yaml`` name
``/data_space/input/...``). Nothing else changes, so what runs is what the pod would run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidi.jobs import podspec
from aidi.local.store import Namespace

HOST_PATHS = ("/dev/shm",)  # mounts that keep the host's folder
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL after this, as the kubelet's terminationGracePeriodSeconds
MAX_REWRITE_BYTES = 1 << 20
TERMINATION_MESSAGE_BYTES = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Variables of the submitting shell that a pod must not inherit: the pod sets its own.
_POD_OWNED_PREFIXES = ("AIDI_", "DMLC_")


class PathMap:
    """Mount paths → folders of this machine, and the rewrite of strings that name them."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        self.mounts = dict(sorted(mounts.items(), key=lambda kv: -len(kv[0])))
        if self.mounts:
            alternatives = "|".join(re.escape(p.rstrip("/")) for p in self.mounts)
            # A mount path counts only as a whole path: not inside a longer name or another path.
            self.pattern: re.Pattern[str] | None = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
        else:
            self.pattern = None

    def rewrite(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: str(self.mounts[m.group(1)]), text)

    def host(self, container_path: str) -> Path:
        """The folder of ``container_path`` (which must be at or under a mount)."""
        return Path(self.rewrite(container_path))


def pod_mounts(pod: dict[str, Any], fs_root: Path) -> dict[str, Path]:
    """Every mount path of the pod's containers → its folder under ``fs_root``."""
    mounts: dict[str, Path] = {}
    spec = pod["spec"]
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"]
            if path not in HOST_PATHS:
                mounts[path] = fs_root / path.lstrip("/")
    return mounts


def prepare_volumes(pod: dict[str, Any], fs_root: Path, namespace: Namespace) -> list[str]:
    """Create each volume's folder (a fresh one for emptyDir) and write the Secret volumes' files.

    Returns the problems that would keep the pod from starting (a missing Secret), as Kubernetes
    reports them in ``CreateContainerConfigError``.
    """
    problems: list[str] = []
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for container in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"] in HOST_PATHS:
                continue
            folder = fs_root / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            secret = (volumes.get(mount["name"]) or {}).get("secret")
            if secret is None:
                continue
            for item in secret.get("items") or []:
                value = namespace.secret_value(secret["secretName"], item["key"])
                if value is None:
                    problems.append(f'secret "{secret["secretName"]}" (key {item["key"]}) not found')
                    continue
                target = folder / item["path"]
                target.unlink(missing_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, secret.get("defaultMode", 0o400))
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(value)
    return problems


@dataclass
class ContainerRun:
    """What one container runs here: the command line, its environment and working directory."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    problems: list[str] = field(default_factory=list)
    termination_log: Path | None = None  # the file behind the container's terminationMessagePath

    def termination_message(self) -> str:
        """What the container wrote to its termination log, capped as the kubelet caps it (4 KiB)."""
        if self.termination_log is None:
            return ""
        try:
            return self.termination_log.read_bytes()[:TERMINATION_MESSAGE_BYTES].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def host_environment() -> dict[str, str]:
    """The submitting shell's environment minus what pods set themselves, with this Python's bin first on PATH
    (the `aidi` commands of the pod steps, like the image's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_POD_OWNED_PREFIXES)}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
    return env


def container_env(container: dict[str, Any], namespace: Namespace, paths: PathMap,
                  base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The container's environment as the kubelet would set it (Secret references resolved), paths mapped."""
    env = dict(base)
    problems: list[str] = []
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = paths.rewrite(str(var["value"]))
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            continue
        value = namespace.secret_value(ref["name"], ref["key"])
        if value is not None:
            env[var["name"]] = value
        elif not ref.get("optional"):
            problems.append(f'secret "{ref["name"]}" (key {ref["key"]}) not found')
    return env, problems


def container_run(container: dict[str, Any], namespace: Namespace, paths: PathMap, base: dict[str, str],
                  extra_env: dict[str, str], termination_dir: Path | None = None) -> ContainerRun:
    """``termination_dir``: where each container's termination log lives (the kubelet mounts a file at
    ``terminationMessagePath``; here that path, as the container names it, becomes a file in this folder)."""
    termination_log = None
    if termination_dir is not None:
        termination_dir.mkdir(parents=True, exist_ok=True)
        termination_log = termination_dir / container["name"]
        termination_log.unlink(missing_ok=True)
        path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG
        paths = PathMap({**paths.mounts, path: termination_log})
    env, problems = container_env(container, namespace, paths, base)
    env.update(extra_env)
    argv = [paths.rewrite(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    cwd = paths.host(container["workingDir"]) if container.get("workingDir") else Path.cwd()
    if argv and argv[0] == "aidi":
        # The pod steps' `aidi` is the one of this Python (the image's, on a cluster).
        found = shutil.which("aidi", path=env.get("PATH"))
        argv[0] = found or argv[0]
    return ContainerRun(container["name"], argv, env, cwd, problems, termination_log)


def start(run: ContainerRun, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the container's process in its own process group (so stopping it stops all it started)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(run.argv, env=run.env, cwd=run.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def kill_group(pid: int, sig: int) -> None:
    """Signal a container's whole process group (the shell and everything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def rewrite_code_files(code_dir: Path, paths: PathMap) -> list[str]:
    """Map the mount paths named in the code package's text files, as in the containers' strings.

    Only regular files under 1 MiB that decode as UTF-8 and name a mount path are rewritten (mode kept);
    returns their paths relative to ``code_dir``.
    """
    changed = []
    for path in sorted(code_dir.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_REWRITE_BYTES:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        new = paths.rewrite(text)
        if new != text:
            mode = path.stat().st_mode
            path.write_text(new, encoding="utf-8")
            os.chmod(path, mode)
            changed.append(str(path.relative_to(code_dir)))
    return changed


def is_main_container(name: str) -> bool:
    return name == podspec.MAIN_CONTAINER
