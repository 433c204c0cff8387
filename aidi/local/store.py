"""The local cluster's state on disk: what the API server keeps on Kubernetes, as files in a work folder.

    <workdir>/namespaces/<ns>/secrets/<name>.json            Secrets (mode 0600): the code password, aidi-dataspace
    <workdir>/namespaces/<ns>/trainjobs/<job>/job.json       the TrainJob: metadata, spec, status
    <workdir>/namespaces/<ns>/trainjobs/<job>/runner.json    this machine's settings for it, the supervisor's pid
    <workdir>/namespaces/<ns>/trainjobs/<job>/supervisor.log the supervisor's own log
    <workdir>/namespaces/<ns>/trainjobs/<job>/pods/<pod>/pod.json          the pod manifest and its status
    <workdir>/namespaces/<ns>/trainjobs/<job>/pods/<pod>/logs/<container>.log
    <workdir>/namespaces/<ns>/trainjobs/<job>/pods/<pod>/fs/...           the pod's volumes at their mount paths

Every read-modify-write of a JSON file holds an exclusive ``flock`` on it (``.lock`` beside it), so a
``traincli cancel`` and the supervisor writing status never lose each other's change; every write is atomic
(temporary file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aidi.errors import NotFoundError

DEFAULT_WORKDIR = Path("~/.aidi/local")
WORKDIR_ENV = "AIDI_LOCAL_WORKDIR"


def default_workdir() -> Path:
    """``$AIDI_LOCAL_WORKDIR``, else ``~/.aidi/local``."""
    return Path(os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR).expanduser()


def write_json(path: Path, data: Any, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of ``path`` (between processes and threads alike)."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the file's object under its lock; returns the new object."""
    with locked(path):
        data = read_json(path)
        change(data)
        write_json(path, data)
        return data


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as ``kubectl patch --type merge``: ``None`` deletes a key."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value


class Namespace:
    """One namespace of the local cluster."""

    def __init__(self, workdir: Path, namespace: str) -> None:
        self.workdir, self.name = workdir, namespace
        self.root = workdir / "namespaces" / namespace

    # ---------------------------------------------------------------------------------- TrainJobs

    def job_dir(self, job: str) -> Path:
        return self.root / "trainjobs" / job

    def job_file(self, job: str) -> Path:
        return self.job_dir(job) / "job.json"

    def job_names(self) -> list[str]:
        folder = self.root / "trainjobs"
        return sorted(p.name for p in folder.iterdir() if (p / "job.json").is_file()) if folder.is_dir() else []

    def read_job(self, job: str) -> dict[str, Any]:
        try:
            return read_json(self.job_file(job))
        except FileNotFoundError:
            raise NotFoundError(f"no TrainJob {job!r} in namespace {self.name} of the local cluster "
                                f"({self.workdir}); `traincli list` shows the jobs there") from None

    # ------------------------------------------------------------------------------------ Secrets

    def secret_file(self, name: str) -> Path:
        return self.root / "secrets" / f"{name}.json"

    def put_secret(self, name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> None:
        encoded = {k: base64.b64encode(v.encode("utf-8")).decode("ascii") for k, v in data.items()}
        write_json(self.secret_file(name), {"metadata": {"name": name, "namespace": self.name,
                                                         "labels": labels or {}}, "data": encoded}, mode=0o600)

    def read_secret(self, name: str) -> dict[str, Any] | None:
        try:
            return read_json(self.secret_file(name))
        except FileNotFoundError:
            return None

    def secret_value(self, name: str, key: str) -> str | None:
        secret = self.read_secret(name)
        if secret is None or key not in (secret.get("data") or {}):
            return None
        return base64.b64decode(secret["data"][key]).decode("utf-8")

    def delete_secret(self, name: str) -> bool:
        try:
            self.secret_file(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def secrets_owned_by(self, job: str) -> list[str]:
        folder = self.root / "secrets"
        owned = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            refs = (read_json(path).get("metadata") or {}).get("ownerReferences") or []
            if any(ref.get("name") == job for ref in refs):
                owned.append(path.stem)
        return owned

    def remove_job(self, job: str) -> None:
        shutil.rmtree(self.job_dir(job), ignore_errors=True)
