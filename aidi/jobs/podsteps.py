"""The steps a job's pods run around the trainer (docs/architecture.md, "Inside a job's pods"):

    aidi fetch-code "$URI" --password-file /var/run/aidi/code/password --dest /job/code
    aidi fetch-data --dest /data_space/input adasmini_4pe:trainset:latest [NAME:TYPE:VERSION ...]
    aidi sync-output --src /data_space/output --name adasmini_4pe_models --type dataset

They read the dataspace from the pod's environment (``AIDI_DATASPACE_*``). The operator and the local
runner both run them, so they live in the core package.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj
from aidi.dataspace import LATEST, Dataspace, DataspaceConfig, TransferProgress, TransferResult, open_dataspace
from aidi.dataspace.lineage import job_record, write_job_record
from aidi.errors import UsageError
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
               sha256: str | None = None, config: DataspaceConfig | None = None) -> FetchCodeResult:
    """Download the package at ``uri``, verify its sha256 (given, or the one its name carries), decrypt with the
    password in ``password_file`` and unpack into ``dest`` refusing any entry that would escape it."""
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
            files = codepkg.unpack_encrypted(local, password, dest)
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
