"""Versioned datasets on an object store, in the layout of docs/architecture.md ("Dataspace layout").

    datasets/<name>/<type>/<version>/<relative path of each file>
    datasets/<name>/<type>/<version>/_claim.json       the number taken, by which upload: never removed
    datasets/<name>/<type>/<version>/_manifest.json    written last: the version exists once this does

Versions are ``v1``, ``v2``, ...; ``latest`` is the newest complete version; versions are immutable.
Every step that two uploads could race for is one create-only write (``ObjectStore`` ``create_only``),
which the store grants to exactly one writer:

1. The claim: an upload takes the next number by creating ``vN/_claim.json`` (its upload id, the
   fingerprint of its local files, who, when); if that exists, ``vN+1``, and so on. Only the claimant, or a
   re-run of the same upload (same paths, sizes and modification times) resuming it, writes under ``vN/``.
2. The files: each is created, never replaced; one already there with the same sha256 (a resumed upload)
   is kept. Only a resumed upload replaces a file of its own uncommitted version whose sha256 differs.
3. The commit: the manifest is created last. A second commit of ``vN`` fails, so a version's manifest and
   files never change once it exists; ``latest`` (the highest complete number) only moves forward.

Until the manifest exists, nothing lists, resolves or downloads the version. ``_deleted.json`` marks a
removed version; the claim stays, so the number is never reused. Versions written before claims existed
(marked ``_pending.json`` while uploading) read the same; an unfinished one is resumed by creating its claim.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aidi.dataspace.files import count_records, count_records_in, dataset_files, sha256_file
from aidi.dataspace.store import BytesCallback, ObjectExists, ObjectStore
from aidi.dataspace.transfer import Meter, run_parallel
from aidi.errors import ConnectionFailed, IntegrityError, NotFoundError, UsageError

log = logging.getLogger(__name__)

DATASET_TYPES = ("trainset", "valset", "testset", "dataset", "rec")
# Ground truth and predictions bound to an image dataset (`hitc dataspace upload -d NAME -t gt|pr`).
BINDING_TYPES = ("gt", "pr")
LATEST = "latest"
# Files up to this size are read into memory once, hashed and sent from there (jobs x this at most).
IN_MEMORY_BYTES = 16 * 1024 * 1024
MANIFEST = "_manifest.json"
CLAIM = "_claim.json"
PENDING = "_pending.json"  # the marker of uploads before claims: read, never written
DELETED = "_deleted.json"
# How many numbers an upload tries to claim before giving up (each one lost was taken by another upload).
CLAIM_ATTEMPTS = 100
MANIFEST_FORMAT = "aidi.dataspace/v1"
# Dataset and model names, and version folders (models use the same rules: aidi/dataspace/registry.py).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")


@dataclass
class TransferProgress:
    """Counts of a running upload or download, passed to the ``progress`` callback (at most a few times a
    second, from any thread). ``files_done`` / ``bytes_done`` include the skipped files, which are also
    counted in ``files_skipped`` / ``bytes_skipped``."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_skipped: int = 0  # already present with the same sha256 (part of files_done)
    bytes_skipped: int = 0
    phase: str = "hashing"   # "hashing" | "uploading" | "downloading" | "committing" | "done"


ProgressCallback = Callable[[TransferProgress], None]


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path relative to the version, size, sha256, and records (``.rec`` only)."""

    path: str
    size: int
    sha256: str
    records: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.records is not None:
            data["records"] = self.records
        return data


@dataclass(frozen=True)
class Manifest:
    """The ``_manifest.json`` of a complete version."""

    name: str
    type: str
    version: str
    files: tuple[FileEntry, ...]
    uploader: str
    created: str  # ISO 8601, UTC
    fingerprint: str  # sha256 over the sorted "path\\tsha256" lines: equal content, equal fingerprint
    binds: dict[str, Any] | None = None  # for gt/pr: {"dataset": NAME, "versions": {TYPE: VERSION}}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "name": self.name, "type": self.type, "version": self.version,
            "uploader": self.uploader, "created": self.created, "fingerprint": self.fingerprint,
            "file_count": len(self.files), "total_size": self.total_size,
        }
        if self.records is not None:
            data["records"] = self.records
        if self.binds is not None:
            data["binds"] = self.binds
        data["files"] = [entry.to_json() for entry in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Manifest:
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            files = tuple(FileEntry(path=f["path"], size=int(f["size"]), sha256=f["sha256"], records=f.get("records"))
                          for f in data["files"])
            return cls(name=data["name"], type=data["type"], version=data["version"], files=files,
                       uploader=data.get("uploader", ""), created=data.get("created", ""),
                       fingerprint=data["fingerprint"], binds=data.get("binds"))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where} is not a valid dataspace manifest ({exc}); the version is damaged: "
                                 "delete it with `hitc dataspace rm` and upload again") from None

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def records(self) -> int | None:
        counts = [entry.records for entry in self.files if entry.records is not None]
        return sum(counts) if counts else None


@dataclass(frozen=True)
class DatasetSummary:
    """One dataset name and type with its complete versions (oldest first)."""

    name: str
    type: str
    versions: tuple[str, ...]
    latest: str | None
    latest_size: int = 0
    latest_files: int = 0
    latest_created: str | None = None


@dataclass
class TransferResult:
    """What an upload or download did."""

    name: str
    type: str
    version: str
    files: int = 0
    bytes: int = 0
    transferred_files: int = 0
    transferred_bytes: int = 0
    skipped_files: int = 0   # already present with the same sha256 (a resumed upload or download)
    skipped_bytes: int = 0
    seconds: float = 0.0
    unchanged: bool = False  # upload: the latest version already holds exactly these files; nothing made
    uri: str = ""
    manifest: Manifest | None = field(default=None, repr=False)


class Dataspace:
    """Versioned datasets on ``store``. Create with ``aidi.dataspace.open_dataspace(config)``."""

    def __init__(self, store: ObjectStore, uploader: str | None = None, jobs: int = 8) -> None:
        self.store = store
        self.uploader = uploader
        self.jobs = jobs

    # -- upload -----------------------------------------------------------------------------------------

    def upload_dataset(self, name: str, type: str, path: str | os.PathLike[str], *, jobs: int | None = None,
                       progress: ProgressCallback | None = None, binds: dict[str, Any] | None = None,
                       ) -> TransferResult:
        """Upload a file, or every file below a folder (with its relative path), as the next version of
        ``name``/``type``; return what was done. The manifest is written last; an interrupted upload is
        invisible and resumes when called again with the same content. If the latest version already holds
        exactly these files, nothing is uploaded and ``result.unchanged`` is true."""
        check_name(name)
        if type not in DATASET_TYPES and not (binds and type in BINDING_TYPES):
            raise UsageError(f"unknown dataset type {type!r}; use one of {', '.join(DATASET_TYPES)} "
                             "(gt/pr JSON goes up with `hitc dataspace upload -d DATASET -t gt|pr -f FILE.json`)")
        started = time.monotonic()
        jobs = jobs or self.jobs
        pairs = dataset_files(Path(path), reserved=(MANIFEST, CLAIM, PENDING, DELETED))
        stats = {rel: file.stat() for rel, file in pairs}
        state = TransferProgress(files_total=len(pairs), bytes_total=sum(st.st_size for st in stats.values()))
        meter = Meter((lambda: progress(state)) if progress else None)
        result = TransferResult(name=name, type=type, version="", files=len(pairs), bytes=state.bytes_total)

        # Hash up front only when the files look like the latest version's (same paths and sizes): then
        # it is probably the same content again, and nothing should be uploaded. Otherwise each file is
        # read once, hashed and sent in one go.
        known: dict[str, FileEntry] = {}
        latest = self._latest_manifest(name, type)
        if latest is not None and sorted((e.path, e.size) for e in latest.files) == \
                sorted((rel, st.st_size) for rel, st in stats.items()):
            entries = self._describe(pairs, state, meter, jobs)
            if content_fingerprint(entries, binds) == latest.fingerprint:
                state.phase = "done"
                meter.tick(force=True)
                return replace(result, version=latest.version, unchanged=True, skipped_files=len(entries),
                               skipped_bytes=result.bytes, seconds=time.monotonic() - started,
                               uri=self.store.uri(self.version_prefix(name, type, latest.version)), manifest=latest)
            known = {entry.path: entry for entry in entries}

        version, resumed = self._claim_version(name, type, local_fingerprint(pairs, binds))
        prefix = self.version_prefix(name, type, version)
        try:
            outcomes, manifest = self._write_version(name, type, version, pairs, stats, known, resumed, binds,
                                                     state, meter, jobs)
        except ConnectionFailed as exc:
            raise ConnectionFailed(f"{exc}. {name}/{type} {version} was not committed: run the same upload again "
                                   "once the server answers, and it resumes where this one stopped") from None
        state.phase = "done"
        meter.tick(force=True)
        sent = [entry for entry, was_sent in outcomes if was_sent]
        return replace(result, version=version, transferred_files=len(sent),
                       transferred_bytes=sum(entry.size for entry in sent),
                       skipped_files=len(outcomes) - len(sent),
                       skipped_bytes=result.bytes - sum(entry.size for entry in sent),
                       seconds=time.monotonic() - started, uri=self.store.uri(prefix), manifest=manifest)

    def _write_version(self, name: str, type: str, version: str, pairs: list[tuple[str, Path]],
                       stats: dict[str, os.stat_result], known: dict[str, FileEntry], resumed: bool,
                       binds: dict[str, Any] | None, state: TransferProgress, meter: Meter,
                       jobs: int) -> tuple[list[tuple[FileEntry, bool]], Manifest]:
        """Store the files under the claimed ``version``, then create its manifest (the commit)."""
        prefix = self.version_prefix(name, type, version)
        # Only a resumed version can hold files already; a fresh one needs no per-file lookups.
        present = {info.key for info in self.store.list(prefix)} if resumed else set()
        state.phase, state.files_done, state.bytes_done = "uploading", 0, 0
        meter.tick(force=True)
        outcomes = run_parallel(
            lambda pair: self._upload_one(prefix, pair[0], pair[1], stats[pair[0]], known.get(pair[0]), present,
                                          resumed, state, meter),
            pairs, jobs)
        entries = [entry for entry, _ in outcomes]

        state.phase = "committing"
        meter.tick(force=True)
        manifest = Manifest(name=name, type=type, version=version, files=tuple(entries),
                            uploader=self.uploader or getpass.getuser(), created=_now(),
                            fingerprint=content_fingerprint(entries, binds), binds=binds)
        try:
            # Created last, once: from here on the version exists, and nothing may change it.
            self.store.put_bytes(prefix + MANIFEST, json.dumps(manifest.to_json(), indent=1).encode(),
                                 create_only=True)
        except ObjectExists:
            committed = self._read_manifest(name, type, version)  # a re-run of this upload committed first
            if committed.fingerprint != manifest.fingerprint:
                raise IntegrityError(f"{name}/{type} {version} was committed by another run of this upload with "
                                     "other content (did the files change?); nothing of this run was kept: "
                                     "upload again") from None
            manifest = committed
        if self.store.exists(prefix + DELETED):
            # `hitc dataspace rm` of this version ran while it was being written: its tombstone hides the version
            # whatever else is there, so the commit counts for nothing; remove what the delete may have missed.
            tombstone = self._read_json(prefix + DELETED) or {}
            for info in list(self.store.list(prefix)):
                if _basename(info.key) not in (DELETED, CLAIM):
                    self.store.delete(info.key)
            raise IntegrityError(f"{name}/{type} {version} was deleted (by {tombstone.get('deleted_by', 'someone')}, "
                                 f"`hitc dataspace rm`) while this upload was writing it; nothing of this upload was "
                                 "kept: upload again to make a new version")
        if resumed:
            self.store.delete(prefix + PENDING)  # a version begun before claims existed
            self.store.abort_uploads(prefix)  # parts of big files from the interrupted attempt
        return outcomes, manifest

    def _describe(self, pairs: list[tuple[str, Path]], state: TransferProgress, meter: Meter,
                  jobs: int) -> list[FileEntry]:
        """sha256, size and record count of every local file, in parallel."""
        on_bytes = _byte_counter(state, meter)

        def describe(pair: tuple[str, Path]) -> FileEntry:
            rel, file = pair
            size = file.stat().st_size
            digest = sha256_file(file, on_bytes)
            records = count_records(file) if rel.endswith(".rec") else None
            with meter.lock:
                state.files_done += 1
            return FileEntry(path=rel, size=size, sha256=digest, records=records)

        return run_parallel(describe, pairs, jobs)

    def _upload_one(self, prefix: str, rel: str, file: Path, before: os.stat_result, known: FileEntry | None,
                    present: set[str], resumed: bool, state: TransferProgress,
                    meter: Meter) -> tuple[FileEntry, bool]:
        """Describe one file and create its object unless an identical copy is there already (a resumed
        upload). Small files are read once: the bytes hashed are the bytes sent."""
        key = prefix + rel
        data = file.read_bytes() if before.st_size <= IN_MEMORY_BYTES else None
        if known is not None:
            entry = known
        elif data is not None:
            entry = FileEntry(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                              records=count_records_in(data, file) if rel.endswith(".rec") else None)
        else:
            entry = FileEntry(path=rel, size=before.st_size, sha256=sha256_file(file),
                              records=count_records(file) if rel.endswith(".rec") else None)

        stored = self.store.stat(key) if key in present else None  # listings carry no metadata: ask for it
        if stored is not None and stored.size == entry.size and stored.sha256 == entry.sha256:
            _count_skipped(state, meter, entry.size)
            return entry, False

        sent_before = state.bytes_done
        if not self._create_file(key, file, data, entry, resumed, state, meter):
            _count_skipped(state, meter, entry.size)  # an earlier attempt of this upload stored it meanwhile
            return entry, False
        after = file.stat()
        if (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size):
            raise IntegrityError(f"{file} changed while it was being uploaded; nothing was committed: upload again "
                                 "once it is complete")
        with meter.lock:
            state.files_done += 1
            # Stores that report no byte progress (or report it partially) still end at the file's size.
            if state.bytes_done == sent_before:
                state.bytes_done += entry.size
        meter.tick()
        return entry, True

    def _create_file(self, key: str, file: Path, data: bytes | None, entry: FileEntry, may_replace: bool,
                     state: TransferProgress, meter: Meter) -> bool:
        """Create ``key`` from ``data`` (or ``file``); False when it exists with this content already. An
        object with other content is replaced only in a resumed version (``may_replace``) that is not
        committed: nobody but a run of this upload writes there."""
        metadata = {"sha256": entry.sha256}
        for attempt in range(2):
            try:
                if data is not None:
                    self.store.put_bytes(key, data, metadata=metadata, create_only=True)
                else:
                    self.store.put_file(key, file, metadata=metadata, progress=_byte_counter(state, meter),
                                        create_only=True)
                return True
            except ObjectExists:
                stored = self.store.stat(key)
                if stored is not None and stored.size == entry.size and stored.sha256 == entry.sha256:
                    return False
                version_prefix = key[:len(key) - len(entry.path)]
                if attempt or not may_replace or self.store.exists(version_prefix + MANIFEST):
                    raise IntegrityError(f"{self.store.uri(key)} exists with other content, written by another "
                                         "upload; nothing of this one was committed: upload again") from None
                log.info("replacing %s, left with other content by an interrupted attempt", key)
                self.store.delete(key)
        raise AssertionError("unreachable")

    def _claim_version(self, name: str, type: str, fingerprint: str) -> tuple[str, bool]:
        """The version this upload writes into: an unfinished upload of the same content newer than every
        complete version (resume), else the next number whose claim this upload creates."""
        states = self._version_states(name, type)
        newest_complete = max((n for n, state in states.items() if state == "complete"), default=0)
        claim = {"upload_id": secrets.token_hex(8), "fingerprint": fingerprint,
                 "uploader": self.uploader or getpass.getuser(), "started": _now()}
        for number in sorted(states, reverse=True):
            if number <= newest_complete:
                break
            if states[number] == "pending" and self._resumable(name, type, f"v{number}", claim):
                log.info("resuming the unfinished upload of %s/%s v%d", name, type, number)
                return f"v{number}", True
        number = max(states, default=0)
        holder: dict[str, Any] = {}
        for _ in range(CLAIM_ATTEMPTS):
            number += 1
            owner = self._create_claim(name, type, f"v{number}", claim)
            if owner is None:
                return f"v{number}", False
            holder = owner
        raise UsageError(f"could not claim a version of {name}/{type}: v{number - CLAIM_ATTEMPTS + 1} to v{number} "
                         f"were all taken by other uploads meanwhile (the last by {holder.get('uploader', '?')}, "
                         f"started {holder.get('started', '?')}); try again")

    def _create_claim(self, name: str, type: str, version: str, claim: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``version``'s claim; None when it is ours, else the claim that holds it."""
        key = self.version_prefix(name, type, version) + CLAIM
        try:
            self.store.put_bytes(key, json.dumps(claim).encode(), create_only=True)
            return None
        except ObjectExists:
            holder = self._read_json(key) or {}
            # Our own claim when the answer to a first attempt was lost and the retry found it.
            return None if holder.get("upload_id") == claim["upload_id"] else holder

    def _resumable(self, name: str, type: str, version: str, claim: dict[str, Any]) -> bool:
        """Whether the pending ``version`` was begun by this same upload (same local fingerprint). A
        version begun before claims existed has only ``_pending.json``: its claim is created now."""
        prefix = self.version_prefix(name, type, version)
        holder = self._read_json(prefix + CLAIM)
        if holder is not None:
            return bool(holder.get("fingerprint") == claim["fingerprint"])
        legacy = self._read_json(prefix + PENDING)
        if not legacy or legacy.get("fingerprint") != claim["fingerprint"]:
            return False
        owner = self._create_claim(name, type, version, claim)
        return owner is None or owner.get("fingerprint") == claim["fingerprint"]

    def bind_annotations(self, dataset: str, kind: str, json_file: str | os.PathLike[str], *,
                         progress: ProgressCallback | None = None) -> TransferResult:
        """Store ground truth (``kind="gt"``) or predictions (``"pr"``) JSON for the image dataset ``dataset``
        as a new version of ``dataset``/``kind``; its manifest's ``binds`` names the dataset versions."""
        check_name(dataset)
        if kind not in BINDING_TYPES:
            raise UsageError(f"-t {kind!r} cannot be bound to a dataset; use gt (ground truth) or pr (predictions)")
        path = Path(json_file)
        if not path.is_file():
            raise NotFoundError(f"{path} does not exist or is not a file; give the {kind} JSON file with -f")
        try:
            json.loads(path.read_bytes())
        except (UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); fix the file and upload again") from None
        versions = {summary.type: summary.latest for summary in self.list_datasets(dataset)
                    if summary.type not in BINDING_TYPES and summary.latest}
        if not versions:
            raise NotFoundError(f"no dataset named {dataset!r} to bind {kind} to; upload its images first "
                                f"(`hitc dataspace upload -n {dataset} -t valset -f DIR`) or check the name with "
                                "`hitc dataspace list`")
        return self.upload_dataset(dataset, kind, path, progress=progress,
                                   binds={"dataset": dataset, "versions": versions})

    # -- read -------------------------------------------------------------------------------------------

    def resolve(self, name: str, type: str, version: str = LATEST) -> Manifest:
        """The manifest of ``version`` (``latest``: the newest complete one); ``NotFoundError`` naming what
        exists when the dataset, type or version does not."""
        check_name(name)
        version = normalize_version(version)
        if version == LATEST:
            manifest = self._latest_manifest(name, type)
            if manifest is None:
                raise self._missing(name, type, None)
            return manifest
        prefix = self.version_prefix(name, type, version)
        if self.store.stat(prefix + MANIFEST) is None or self.store.stat(prefix + DELETED) is not None:
            raise self._missing(name, type, version)
        return self._read_manifest(name, type, version)

    def versions(self, name: str, type: str) -> list[str]:
        """Complete versions of ``name``/``type``, oldest first."""
        return [f"v{n}" for n, state in sorted(self._version_states(name, type).items()) if state == "complete"]

    def pending_versions(self, name: str, type: str) -> list[dict[str, Any]]:
        """Unfinished uploads of ``name``/``type`` (not versions yet): ``{"version", "uploader", "started"}``."""
        found = []
        for number, state in sorted(self._version_states(name, type).items()):
            if state == "pending":
                prefix = self.version_prefix(name, type, f"v{number}")
                marker = self._read_json(prefix + CLAIM) or self._read_json(prefix + PENDING) or {}
                found.append({"version": f"v{number}", "uploader": marker.get("uploader"),
                              "started": marker.get("started")})
        return found

    def list_datasets(self, name: str | None = None) -> list[DatasetSummary]:
        """Every dataset name/type with complete versions (only ``name``'s when given)."""
        names = [name] if name else [_basename(info.key) for info in self.store.list("datasets/", recursive=False)
                                     if info.is_dir]
        summaries = []
        for dataset in names:
            for info in self.store.list(f"datasets/{dataset}/", recursive=False):
                if not info.is_dir:
                    continue
                type = _basename(info.key)
                versions = self.versions(dataset, type)
                if not versions:
                    continue
                latest = self._read_manifest(dataset, type, versions[-1])
                summaries.append(DatasetSummary(name=dataset, type=type, versions=tuple(versions), latest=versions[-1],
                                                latest_size=latest.total_size, latest_files=len(latest.files),
                                                latest_created=latest.created))
        return summaries

    def download_dataset(self, name: str, type: str, version: str = LATEST, dest: str | os.PathLike[str] = ".",
                         *, jobs: int | None = None, progress: ProgressCallback | None = None) -> TransferResult:
        """Download the version's files into ``dest`` (``dest/<relative path>``), verifying every sha256.
        Files already in ``dest`` with the right sha256 are kept (a re-run resumes)."""
        started = time.monotonic()
        manifest = self.resolve(name, type, version)
        prefix = self.version_prefix(name, type, manifest.version)
        root = Path(dest).resolve()
        targets = [(entry, _inside(root, entry.path)) for entry in manifest.files]
        state = TransferProgress(files_total=len(targets), bytes_total=manifest.total_size, phase="downloading")
        meter = Meter((lambda: progress(state)) if progress else None)

        on_bytes = _byte_counter(state, meter)

        def fetch(item: tuple[FileEntry, Path]) -> bool:
            entry, target = item
            if target.is_file() and target.stat().st_size == entry.size and sha256_file(target) == entry.sha256:
                _count_skipped(state, meter, entry.size)
                return False
            self.store.get_file(prefix + entry.path, target, progress=on_bytes, sha256=entry.sha256)
            with meter.lock:
                state.files_done += 1
            meter.tick()
            return True

        meter.tick(force=True)
        fetched = run_parallel(fetch, targets, jobs or self.jobs)
        state.phase = "done"
        meter.tick(force=True)
        sent = [entry for entry, was_sent in zip(manifest.files, fetched, strict=True) if was_sent]
        return TransferResult(name=name, type=type, version=manifest.version, files=len(manifest.files),
                              bytes=manifest.total_size, transferred_files=len(sent),
                              transferred_bytes=sum(entry.size for entry in sent),
                              skipped_files=len(manifest.files) - len(sent),
                              skipped_bytes=manifest.total_size - sum(entry.size for entry in sent),
                              seconds=time.monotonic() - started, uri=str(root), manifest=manifest)

    # -- delete -----------------------------------------------------------------------------------------

    def delete_version(self, name: str, type: str, version: str) -> int:
        """Remove a version (complete or abandoned); returns the number of objects removed. The manifest goes
        first, so the version disappears at once; the version number is never reused."""
        check_name(name)
        version = normalize_version(version)
        if version == LATEST:
            raise UsageError("name the version to delete, e.g. --version v3 (`latest` is refused: it may have "
                             "moved since you looked)")
        prefix = self.version_prefix(name, type, version)
        # The claim and the tombstone stay: they keep the number taken, so it never means other content.
        objects = [info.key for info in self.store.list(prefix) if _basename(info.key) not in (DELETED, CLAIM)]
        if not objects:
            raise self._missing(name, type, version)
        removed = 0
        # The tombstone first: a version with one is gone for every reader, and an upload still writing this
        # version sees it after its commit and fails rather than leave a version with files missing.
        with contextlib.suppress(ObjectExists):
            self.store.put_bytes(prefix + DELETED, json.dumps({"deleted_by": self.uploader or getpass.getuser(),
                                                               "deleted": _now()}).encode(), create_only=True)
        if prefix + MANIFEST in objects:
            self.store.delete(prefix + MANIFEST)
            removed += 1
        for key in objects:
            if key != prefix + MANIFEST:
                self.store.delete(key)
                removed += 1
        self.store.abort_uploads(prefix)
        return removed

    def version_prefix(self, name: str, type: str, version: str) -> str:
        """``datasets/<name>/<type>/<version>/``."""
        return f"datasets/{name}/{type}/{version}/"

    def close(self) -> None:
        self.store.close()

    # -- helpers ----------------------------------------------------------------------------------------

    def _version_states(self, name: str, type: str) -> dict[int, str]:
        """Every version number used under ``name``/``type``: complete, deleted, pending (claimed, or marked
        ``_pending.json`` by an upload before claims), or orphan (files without manifest or marker)."""
        numbers = []
        for info in self.store.list(f"datasets/{name}/{type}/", recursive=False):
            match = VERSION_RE.match(_basename(info.key))
            if info.is_dir and match:
                numbers.append(int(match.group(1)))

        def state_of(number: int) -> str:
            prefix = self.version_prefix(name, type, f"v{number}")
            for marker, state in ((DELETED, "deleted"), (MANIFEST, "complete"), (CLAIM, "pending"),
                                  (PENDING, "pending")):
                if self.store.stat(prefix + marker) is not None:
                    return state
            return "orphan"

        return dict(zip(numbers, run_parallel(state_of, numbers, self.jobs), strict=True))

    def _latest_manifest(self, name: str, type: str) -> Manifest | None:
        versions = self.versions(name, type)
        return self._read_manifest(name, type, versions[-1]) if versions else None

    def _read_manifest(self, name: str, type: str, version: str) -> Manifest:
        key = self.version_prefix(name, type, version) + MANIFEST
        try:
            data = json.loads(self.store.get_bytes(key))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise IntegrityError(f"{self.store.uri(key)} is not valid JSON; the version is damaged: delete it "
                                 "with `hitc dataspace rm` and upload again")
        return Manifest.from_json(data, self.store.uri(key))

    def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.store.get_bytes(key))
        except (NotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _missing(self, name: str, type: str, version: str | None) -> NotFoundError:
        """The one line that says what is missing and what exists instead."""
        types = [_basename(info.key) for info in self.store.list(f"datasets/{name}/", recursive=False) if info.is_dir]
        if not types:
            return NotFoundError(f"no dataset named {name!r} in the dataspace ({self.store.uri('datasets/')}); "
                                 "see `hitc dataspace list`")
        if type not in types:
            return NotFoundError(f"dataset {name!r} has no type {type!r} (it has {', '.join(sorted(types))}); "
                                 f"use -t with one of those")
        states = self._version_states(name, type)
        complete = [f"v{n}" for n, state in sorted(states.items()) if state == "complete"]
        available = f"its versions: {', '.join(complete)}" if complete else "it has no complete version yet"
        if version is None:
            return NotFoundError(f"{name}/{type} has no complete version yet (an upload was interrupted?); "
                                 "re-run the upload to finish it")
        state = states.get(int(version[1:]))
        if state == "pending":
            return NotFoundError(f"{name}/{type} {version} is an unfinished upload, not a version; re-run the upload "
                                 f"to finish it ({available})")
        if state == "deleted":
            deleted = self._read_json(self.version_prefix(name, type, version) + DELETED) or {}
            return NotFoundError(f"{name}/{type} {version} was deleted by {deleted.get('deleted_by', '?')} on "
                                 f"{deleted.get('deleted', '?')} ({available})")
        return NotFoundError(f"{name}/{type} has no version {version} ({available})")


def _count_skipped(state: TransferProgress, meter: Meter, size: int) -> None:
    with meter.lock:
        state.files_done += 1
        state.files_skipped += 1
        state.bytes_done += size
        state.bytes_skipped += size
    meter.tick()


def _byte_counter(state: TransferProgress, meter: Meter) -> BytesCallback:
    def add(count: int) -> None:
        state.bytes_done += count
    return meter.bytes_callback(add)


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-' (at most 128), "
                         "starting with a letter or digit")
    return name


def normalize_version(version: str | int) -> str:
    """``latest``, ``v3``, ``3`` → ``latest``, ``v3``, ``v3``; anything else is a ``UsageError``."""
    text = str(version).strip()
    if text == LATEST:
        return text
    if text.isdigit():
        text = f"v{text}"
    if not VERSION_RE.match(text):
        raise UsageError(f"invalid version {version!r}: use latest or v1, v2, ...")
    return text


def content_fingerprint(entries: list[FileEntry], binds: dict[str, Any] | None = None) -> str:
    """sha256 over the sorted ``path<TAB>sha256`` lines (and the binding): equal content, equal fingerprint."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        digest.update(f"{entry.path}\t{entry.sha256}\n".encode())
    if binds:
        digest.update(json.dumps(binds, sort_keys=True).encode())
    return digest.hexdigest()


def local_fingerprint(pairs: list[tuple[str, Path]], binds: dict[str, Any] | None = None) -> str:
    """What identifies an upload before its files are hashed: paths, sizes and modification times (and
    the binding). An interrupted upload resumes into its pending version when this matches."""
    digest = hashlib.sha256()
    for rel, file in sorted(pairs):
        st = file.stat()
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if binds:
        digest.update(json.dumps(binds, sort_keys=True).encode())
    return digest.hexdigest()


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing a manifest path that would land outside ``root``."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or rel.startswith("/"):
        raise IntegrityError(f"the manifest names the file {rel!r}, which would land outside {root}; "
                             "refusing to download it")
    return target


def _basename(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
