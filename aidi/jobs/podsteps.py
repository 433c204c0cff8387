"""The steps a job's pods run around the trainer (docs/architecture.md, "Inside a job's pods"):

    aidi fetch-code "$URI" --password-file /var/run/aidi/code/password --dest /job/code
    aidi fetch-data --dest /data_space/input adasmini_4pe:trainset:latest [NAME:TYPE:VERSION ...]
    aidi sync-output --src /data_space/output --name adasmini_4pe_models --type dataset
    aidi fetch-checkpoint --prefix checkpoints/NS/JOB/UID/ --dest /data_space/output --message-file /dev/termination-log
    aidi sync-checkpoints --prefix checkpoints/NS/JOB/UID/ --src /data_space/output --attempt 0 --interval 600 \
        --until /var/run/aidi/done/exit-code --rank-file /var/run/aidi/done/rank
    aidi delete-checkpoints --prefix checkpoints/NS/JOB/UID/

They read the dataspace from the pod's environment (``AIDI_DATASPACE_*``). The operator and the local
runner both run them, so they live in the core package.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj
from aidi.dataspace import (
    LATEST,
    Dataspace,
    DataspaceConfig,
    TransferProgress,
    TransferResult,
    open_dataspace,
    open_store,
)
from aidi.dataspace import checkpoints as ckpt
from aidi.dataspace.lineage import job_record, write_job_record
from aidi.errors import AidiError, IntegrityError, UsageError
from aidi.jobs import codepkg

log = logging.getLogger(__name__)

_PACKAGE_NAME = re.compile(r"^([0-9a-f]{64})\.tar\.gz\.enc$")
_DATASET_REF = re.compile(tj.DATASET_NAME[:-1] + r":(" + "|".join(tj.DATASET_TYPES) + r"):"
                          + tj.DATASET_VERSION[1:])


class TransferLog:
    """Logs transfer progress every few seconds: files, bytes and rate."""

    def __init__(self, what: str, every: float = 5.0) -> None:
        self.what, self.every = what, every
        self.start = self.last = time.monotonic()

    def __call__(self, p: TransferProgress) -> None:
        now = time.monotonic()
        if now - self.last < self.every or p.phase in ("hashing", "done"):
            return
        self.last = now
        rate = p.bytes_done / max(now - self.start, 1e-6)
        log.info("%s: %d/%d files, %s/%s (%s/s)", self.what, p.files_done + p.files_skipped, p.files_total,
                 codepkg.human_bytes(p.bytes_done + p.bytes_skipped), codepkg.human_bytes(p.bytes_total),
                 codepkg.human_bytes(rate))


def _dataspace_for(uri: str, config: DataspaceConfig) -> tuple[Dataspace, str]:
    """(dataspace, key) for a package URI: ``s3://BUCKET/KEY`` (any bucket of the configured server) or the
    configured store's own ``file://`` URIs."""
    if uri.startswith("s3://"):
        if config.is_local:
            raise UsageError(f"{uri} is in S3, but the dataspace is a local folder ({config.endpoint}); set "
                             "AIDI_DATASPACE_ENDPOINT to the S3 server")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or not key:
            raise UsageError(f"{uri} is not s3://BUCKET/KEY")
        return open_dataspace(replace(config, bucket=bucket), jobs=1), key
    dataspace = open_dataspace(config, jobs=1)
    root = dataspace.store.uri("")
    if not uri.startswith(root) or uri == root:
        dataspace.close()
        raise UsageError(f"{uri} is not in the configured dataspace ({root}); the code package URI must be "
                         "s3://BUCKET/KEY or a file:// URI under AIDI_DATASPACE_ENDPOINT")
    return dataspace, uri[len(root):]


def read_password(path: str | os.PathLike[str]) -> str:
    try:
        # Only the line ending a file editor or `echo` adds: a mounted Secret holds the exact bytes.
        password = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise UsageError(f"password file {path} does not exist; is the Secret <job>-code mounted there?") from None
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


@dataclass
class FetchCodeResult:
    uri: str
    sha256: str
    bytes: int
    files: int
    dest: str


def fetch_code(uri: str, password_file: str | os.PathLike[str], dest: str | os.PathLike[str],
               sha256: str | None = None, config: DataspaceConfig | None = None,
               limits: codepkg.UnpackLimits | None = None) -> FetchCodeResult:
    """Download the package at ``uri``, verify its sha256 (given, or the one its name carries), decrypt with the
    password in ``password_file`` and unpack into ``dest``, all or nothing, refusing any entry that would escape
    it and any package over ``limits`` (default: :meth:`codepkg.UnpackLimits.from_env`)."""
    password = read_password(password_file)
    config = config or DataspaceConfig.from_env()
    dataspace, key = _dataspace_for(uri, config)
    named = _PACKAGE_NAME.match(key.rsplit("/", 1)[-1])
    expected = sha256 or (named.group(1) if named else None)
    try:
        with tempfile.TemporaryDirectory(prefix="aidi-fetch-") as tmp:
            local = Path(tmp) / "package.tar.gz.enc"
            info = dataspace.store.get_file(key, local, sha256=expected)
            size = local.stat().st_size
            files = codepkg.unpack_encrypted(local, password, dest, limits=limits or codepkg.UnpackLimits.from_env())
    finally:
        dataspace.close()
    log.info("fetched %s (%s, sha256 %s), unpacked %d files into %s", uri, codepkg.human_bytes(size),
             "verified" if expected else "not given", files, dest)
    return FetchCodeResult(uri=uri, sha256=expected or info.sha256 or "", bytes=size, files=files, dest=str(dest))


def parse_dataset_ref(ref: str) -> tuple[str, str, str]:
    """``NAME:TYPE:VERSION`` (as the operator writes them) → (name, type, version)."""
    if not _DATASET_REF.match(ref):
        raise UsageError(f"{ref!r} is not NAME:TYPE:VERSION (e.g. adasmini_4pe:trainset:latest); TYPE is one of "
                         f"{', '.join(tj.DATASET_TYPES)}, VERSION is vN or latest")
    name, type_, version = ref.split(":")
    return name, type_, version


def fetch_data(refs: list[str], dest: str | os.PathLike[str], config: DataspaceConfig | None = None,
               jobs: int = 8, record: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Download each dataset to ``dest/<name>/<type>/<version>/``; for ``latest`` also ``.../latest`` (a link to
    the version it resolved to, so the files are stored once). ``record``: write the job record there (the
    job and the exact versions fetched, aidi/dataspace/lineage.py) once everything is downloaded."""
    parsed = [parse_dataset_ref(ref) for ref in refs]  # all checked before anything is downloaded
    dataspace = open_dataspace(config or DataspaceConfig.from_env(), jobs=jobs)
    done: list[dict[str, Any]] = []
    try:
        for name, type_, version in parsed:
            manifest = dataspace.resolve(name, type_, version)
            base = Path(dest) / name / type_
            target = base / manifest.version
            result = dataspace.download_dataset(name, type_, manifest.version, target, jobs=jobs,
                                                progress=TransferLog(f"{name}:{type_}:{manifest.version}"))
            if version == LATEST:
                _link_latest(base, manifest.version)
            log.info("%s:%s:%s → %s: %d files, %s (%d already there)", name, type_, manifest.version, target,
                     result.files, codepkg.human_bytes(result.bytes), result.skipped_files)
            done.append({"name": name, "type": type_, "requested": version, "version": manifest.version,
                         "path": str(target), "files": result.files, "bytes": result.bytes})
    finally:
        dataspace.close()
    if record is not None:
        write_job_record(Path(record), job_record(done, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    return done


def _link_latest(base: Path, version: str) -> None:
    link = base / LATEST
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        raise UsageError(f"{link} is a folder, not the link to the latest version; remove it and run again")
    link.symlink_to(version, target_is_directory=True)


def sync_output(src: str | os.PathLike[str], name: str, type_: str, config: DataspaceConfig | None = None,
                jobs: int = 8) -> TransferResult | None:
    """Upload everything below ``src`` as a new version of ``name``/``type``; None when there is nothing."""
    src = Path(src)
    if not src.is_dir() or not any(p.is_file() for p in src.rglob("*")):
        log.info("%s is empty: no outputs to sync to %s:%s", src, name, type_)
        return None
    dataspace = open_dataspace(config or DataspaceConfig.from_env(), jobs=jobs)
    try:
        result = dataspace.upload_dataset(name, type_, src, jobs=jobs, progress=TransferLog(f"sync {name}:{type_}"))
    finally:
        dataspace.close()
    if result.unchanged:
        log.info("outputs unchanged since %s:%s:%s; no new version", name, type_, result.version)
    else:
        log.info("synced %d files (%s) from %s to %s:%s:%s", result.files, codepkg.human_bytes(result.bytes), src,
                 name, type_, result.version)
    return result


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class RestoreResult:
    checkpoint: int | None
    attempt: int | None = None
    summary: str = ""
    files: int = 0
    bytes: int = 0
    dest: str = ""

    def message(self) -> str:
        """The line the lifecycle reads from the termination message (kept small: the kubelet keeps 4 KiB)."""
        if self.checkpoint is None:
            return ""
        return json.dumps({"checkpoint": self.checkpoint, "attempt": self.attempt, "summary": self.summary})


def _checkpoints(prefix: str, config: DataspaceConfig | None) -> ckpt.CheckpointStore:
    if not prefix.startswith(ckpt.ROOT + "/") or not prefix.endswith("/"):
        raise UsageError(f"--prefix {prefix!r}: expected {ckpt.ROOT}/NAMESPACE/JOB/UID/ (as the operator writes it)")
    return ckpt.CheckpointStore(open_store(config or DataspaceConfig.from_env(), jobs=1), prefix)


def fetch_checkpoint(prefix: str, dest: str | os.PathLike[str], message_file: str | os.PathLike[str] | None = None,
                     config: DataspaceConfig | None = None) -> RestoreResult:
    """Restore the newest complete checkpoint under ``prefix`` into ``dest`` (the trainer's output folder).

    A manifest that cannot be read (damaged by hand) is skipped for the one before it. What was restored goes
    to ``message_file`` (the container's termination message), where the job's status picks it up."""
    checkpoints = _checkpoints(prefix, config)
    result = RestoreResult(checkpoint=None, dest=str(dest))
    try:
        for number in reversed(checkpoints.numbers()):
            try:
                found = checkpoints.read(number)
            except IntegrityError as exc:
                log.warning("%s; trying the checkpoint before it", exc)
                continue
            Path(dest).mkdir(parents=True, exist_ok=True)
            size = checkpoints.restore(found, Path(dest))
            result = RestoreResult(checkpoint=found.number, attempt=found.attempt, summary=found.summary,
                                   files=len(found.files), bytes=size, dest=str(dest))
            log.info("restored checkpoint %d (attempt %d's, %s): %d files, %s into %s", found.number, found.attempt,
                     found.summary, len(found.files), codepkg.human_bytes(size), dest)
            break
        else:
            log.info("no checkpoint under %s: the trainer starts from the beginning", checkpoints.store.uri(prefix))
    finally:
        checkpoints.store.close()
    if message_file is not None:
        try:
            Path(message_file).write_text(result.message(), encoding="utf-8")
        except OSError as exc:  # outside a pod (no /dev/termination-log): the log line above says it all
            log.debug("cannot write %s: %s", message_file, exc)
    return result


class _Stop:
    """SIGTERM (the pod is deleted) or SIGINT: end after one last copy, within the grace period."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def sync_checkpoints(prefix: str, src: str | os.PathLike[str], attempt: int, interval: float,
                     until: str | os.PathLike[str] | None = None, max_bytes_per_second: int | None = None,
                     config: DataspaceConfig | None = None, poll: float = 2.0,
                     rank_file: str | os.PathLike[str] | None = None,
                     staging: str | os.PathLike[str] | None = None) -> int:
    """Copy new checkpoints from ``src`` while the trainer runs: when a progress file, a finished step or a
    records file changes, and at least ``interval`` seconds after the last copy. Ends after a last copy once
    the file ``until`` exists (the trainer's exit code) or on SIGTERM. Returns how many checkpoints it made.
    Only the chief's folder is copied: ``rank_file`` holds the trainer's rank (without it, worker 0 is the chief);
    every worker of a distributed job runs this. New files are staged (copied whole) under ``staging`` (default:
    the system's temporary folder) before they are sent.

    A failed copy (the dataspace unreachable) is logged and tried again: training never waits for it."""
    checkpoints = _checkpoints(prefix, config)
    src, stop, made = Path(src), _Stop(), 0
    worker_index = int(os.environ.get("AIDI_WORKER_INDEX") or 0)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    limit = ckpt.RateLimit(max_bytes_per_second)
    seen: dict[str, float] = {}
    files: ckpt.Seen = {}
    previous: ckpt.Checkpoint | None = None
    last = -float("inf")
    try:
        try:
            previous = checkpoints.latest()
        except AidiError as exc:
            log.warning("cannot read the checkpoints so far (%s); trying again at the next copy", exc)
        while True:
            final = stop.requested or (until is not None and Path(until).exists())
            due = final or (time.monotonic() - last >= interval and ckpt.has_new_checkpoint(src, seen))
            if due and ckpt.is_chief(None if rank_file is None else Path(rank_file), worker_index):
                try:
                    done = ckpt.sync_once(checkpoints, src, attempt, previous=previous, limit=limit, seen=files,
                                          staging_root=None if staging is None else Path(staging))
                    last = time.monotonic()
                except AidiError as exc:
                    log.warning("checkpoint copy failed (%s); trying again", exc)
                    seen.clear()
                    done = None
                if done is not None:
                    previous, made = done, made + 1
                    log.info("checkpoint %d (%s): %d files, %s", done.number, done.summary, len(done.files),
                             codepkg.human_bytes(done.size))
            if final:
                return made
            for _ in range(max(1, int(poll / 0.2))):
                if stop.requested:
                    break
                time.sleep(0.2)
    finally:
        checkpoints.store.close()


def delete_checkpoints(prefix: str, config: DataspaceConfig | None = None) -> int:
    """Remove every checkpoint under ``prefix``; returns how many objects went."""
    checkpoints = _checkpoints(prefix, config)
    try:
        return checkpoints.delete_all()
    finally:
        checkpoints.store.close()
