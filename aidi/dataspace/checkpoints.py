"""Training checkpoints kept in the dataspace while a job runs, so that a restarted gang resumes.

Worker 0's pod copies its output folder (the trainer's ``<step>-progress.json``, ``<step>-NNNN.params`` /
``.states``, the finished steps' exports, ``metrics.json``, append-only ``*.jsonl`` records) here as it is
written, and the fetch step of the next gang restores the newest checkpoint before the trainer starts.

Layout (docs/architecture.md, "Dataspace layout")::

    checkpoints/<namespace>/<job>/<uid>/objects/<sha256>   a file's bytes, create-only; shared by every
                                                           checkpoint holding those bytes (uploaded once)
    checkpoints/<namespace>/<job>/<uid>/c000007.json       checkpoint 7: path -> sha256/size, created last
                                                           and create-only, so it exists only once whole

The job's uid keeps a job deleted and submitted again under the same name from resuming a stranger's run.
Only complete files are taken: ``*.tmp`` names (the trainer writes through them and renames) are skipped,
and a ``*.jsonl`` file is cut after its last full line. The progress files are read before anything else,
so every epoch checkpoint they name (written before them, and never removed) is in the same snapshot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidi.dataspace.store import ObjectExists, ObjectStore
from aidi.errors import IntegrityError, UsageError

log = logging.getLogger(__name__)

ROOT = "checkpoints"
# The trainer writes its rank to the file this variable names (the pod sets it). In a distributed run ps-lite's
# rank 0 (the chief, which alone writes checkpoints and outputs) may be any worker's pod, so the pods' sync steps
# act where the rank is 0; without the file (another trainer) worker 0's pod does.
RANK_FILE_ENV = "AIDI_RANK_FILE"
MANIFEST_NAME = re.compile(r"^c(\d{6,})\.json$")
_PROGRESS = "-progress.json"
_LAST = "-last-0000.params"
_CHUNK = 1 << 20


def job_prefix(namespace: str, job: str, uid: str) -> str:
    """``checkpoints/<namespace>/<job>/<uid>/``: where one job's checkpoints live."""
    for what, value in (("namespace", namespace), ("job", job), ("uid", uid)):
        if not value or "/" in value or value in (".", ".."):
            raise UsageError(f"checkpoint {what} {value!r} must be a non-empty name without '/'")
    return f"{ROOT}/{namespace}/{job}/{uid}/"


@dataclass
class Snapshot:
    """The complete files of an output folder at one moment, staged in a private folder."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {sha256, size}
    staged: dict[str, Path] = field(default_factory=dict)  # path -> staged copy (files not seen before)
    identity: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> (inode, size, mtime)
    progress: dict[str, int] = field(default_factory=dict)  # step -> last saved epoch
    done: list[str] = field(default_factory=list)  # steps whose -last-0000.params exists
    latest_step: str | None = None  # the step written to most recently


def _copy(src: Path, dest: Path, complete_lines: bool) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` hashing on the way; with ``complete_lines``, stop after the last newline."""
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin:
        data = fin.read() if complete_lines else None
        with open(dest, "wb") as fout:
            if data is not None:
                data = data[: data.rfind(b"\n") + 1]
                digest.update(data)
                fout.write(data)
                return digest.hexdigest(), len(data)
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def _progress_then_rest(src: Path, progress_files: list[Path]) -> Iterator[Path]:
    yield from progress_files
    # Listed only once the progress files are read: each names an epoch whose .params/.states were renamed into
    # place before it, so they are in this listing.
    yield from sorted(p for p in src.rglob("*") if p.parent != src or not p.name.endswith(_PROGRESS))


# path -> ((inode, size, mtime_ns), {sha256, size}) of files already in a committed checkpoint.
Seen = dict[str, tuple[tuple[int, int, int], dict[str, Any]]]


def take_snapshot(src: Path, staging: Path, seen: Seen | None = None) -> Snapshot:
    """Stage a consistent copy of the complete files under ``src`` into ``staging``.

    A file in ``seen`` with the same inode, size and modification time is taken from there without being read
    again: the trainer replaces files (a new inode) rather than change them, so a long run's earlier epochs cost
    nothing per copy. Progress files are always read (they are small, and their content is the checkpoint)."""
    snap = Snapshot()
    staging.mkdir(parents=True, exist_ok=True)
    progress_files = sorted(src.glob(f"*{_PROGRESS}"))
    newest = -1.0
    for path in _progress_then_rest(src, progress_files):
        if path.is_symlink() or not path.is_file() or path.name.endswith(".tmp") or path.name.startswith("."):
            continue
        rel = path.relative_to(src).as_posix()
        name = path.name
        target = staging / f"{len(snap.staged):06d}"
        try:
            st = path.stat()
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            known = (seen or {}).get(rel)
            if known is not None and known[0] == ident and not name.endswith(_PROGRESS):
                snap.files[rel], snap.identity[rel] = known[1], ident
                if name.endswith(_LAST) and "/" not in rel:
                    snap.done.append(name[: -len(_LAST)])
                continue
            mtime = st.st_mtime
            sha, size = _copy(path, target, complete_lines=path.suffix == ".jsonl")
        except FileNotFoundError:
            continue  # replaced between listing and reading: the next sync takes the new one
        snap.files[rel] = {"sha256": sha, "size": size}
        snap.staged[rel], snap.identity[rel] = target, ident
        if name.endswith(_PROGRESS) and "/" not in rel:
            step = name[: -len(_PROGRESS)]
            try:
                snap.progress[step] = int(json.loads(target.read_text())["epoch"])
            except (ValueError, KeyError, TypeError):
                continue
            if mtime > newest:
                newest, snap.latest_step = mtime, step
        elif name.endswith(_LAST) and "/" not in rel:
            snap.done.append(name[: -len(_LAST)])
    # A progress file whose epoch files were not there is no checkpoint: leave it out rather than restore it.
    for step, epoch in list(snap.progress.items()):
        if not all(f"{step}-{epoch:04d}{ext}" in snap.files for ext in (".params", ".states")):
            del snap.progress[step]
            snap.files.pop(f"{step}{_PROGRESS}", None)
            snap.staged.pop(f"{step}{_PROGRESS}", None)
    return snap


def describe(progress: dict[str, int], done: list[str], latest_step: str | None) -> str:
    """Where a run restored from this checkpoint resumes: "step fusion-bn-c1 after epoch 3"."""
    running = [s for s in progress if s not in done]
    if latest_step in running or (running and latest_step is None):
        step = latest_step if latest_step in running else running[-1]
        return f"step {step} after epoch {progress[step]}"
    if done:
        last = latest_step if latest_step in done else done[-1]
        return f"after step {last}"
    return "from the saved files"


class RateLimit:
    """Keeps the average upload rate under ``bytes_per_second`` by sleeping after each file."""

    def __init__(self, bytes_per_second: int | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.sleep = bytes_per_second, sleep
        self.start = time.monotonic()
        self.sent = 0

    def account(self, size: int) -> None:
        if not self.rate:
            return
        self.sent += size
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            self.sleep(ahead)


@dataclass
class Checkpoint:
    """One committed checkpoint, as its manifest says."""

    key: str
    number: int
    attempt: int
    files: dict[str, dict[str, Any]]
    progress: dict[str, int]
    done: list[str]
    latest_step: str | None
    created: str

    @property
    def summary(self) -> str:
        return describe(self.progress, self.done, self.latest_step)

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())


class CheckpointStore:
    """A job's checkpoints under ``prefix`` (see :func:`job_prefix`)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def object_key(self, sha256: str) -> str:
        return f"{self.prefix}objects/{sha256}"

    def numbers(self) -> list[int]:
        found = []
        for info in self.store.list(self.prefix, recursive=False):
            m = MANIFEST_NAME.match(info.key[len(self.prefix):])
            if m and not info.is_dir:
                found.append(int(m.group(1)))
        return sorted(found)

    def read(self, number: int) -> Checkpoint:
        key = f"{self.prefix}c{number:06d}.json"
        try:
            data = json.loads(self.store.get_bytes(key))
            return Checkpoint(key=key, number=number, attempt=int(data["attempt"]), files=dict(data["files"]),
                              progress={k: int(v) for k, v in data.get("progress", {}).items()},
                              done=list(data.get("done", [])), latest_step=data.get("latestStep"),
                              created=str(data.get("created", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{self.store.uri(key)} is not a checkpoint manifest ({exc}); delete it "
                                 f"to fall back to the one before") from None

    def latest(self) -> Checkpoint | None:
        numbers = self.numbers()
        return self.read(numbers[-1]) if numbers else None

    def commit(self, snap: Snapshot, attempt: int, limit: RateLimit | None = None,
               previous: Checkpoint | None = None) -> Checkpoint | None:
        """Upload what the store lacks of ``snap``, then create the next manifest; None when ``snap`` holds
        the same files as ``previous`` (or the newest checkpoint)."""
        if not snap.files:
            return None
        previous = previous or self.latest()
        if previous is not None and previous.files == snap.files:
            return None
        known = {f["sha256"] for f in previous.files.values()} if previous is not None else set()
        for rel, entry in snap.files.items():
            sha = entry["sha256"]
            if sha in known:
                continue
            key = self.object_key(sha)
            if self.store.stat(key) is None:
                if rel not in snap.staged:
                    raise IntegrityError(f"{self.store.uri(key)} ({rel}) is gone from the dataspace; the next copy "
                                         "sends it again")
                # ObjectExists: the same bytes, put there by an earlier copy whose answer was lost.
                with contextlib.suppress(ObjectExists):
                    self.store.put_file(key, snap.staged[rel], metadata={"sha256": sha}, create_only=True)
                if limit is not None:
                    limit.account(int(entry["size"]))
            known.add(sha)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"attempt": attempt, "files": snap.files, "progress": snap.progress, "done": snap.done,
                "latestStep": snap.latest_step, "created": created}
        number = (previous.number if previous is not None else 0) + 1
        while True:
            key = f"{self.prefix}c{number:06d}.json"
            try:
                self.store.put_bytes(key, json.dumps(body, indent=1, sort_keys=True).encode(), create_only=True)
                break
            except ObjectExists:
                number = max([number, *self.numbers()]) + 1  # another writer took it: the next free number
        return Checkpoint(key=key, number=number, attempt=attempt, files=snap.files, progress=snap.progress,
                          done=snap.done, latest_step=snap.latest_step, created=created)

    def restore(self, checkpoint: Checkpoint, dest: Path) -> int:
        """Download the checkpoint's files into ``dest`` (sha256 checked); returns the bytes written."""
        total = 0
        root = dest.resolve()
        for rel, entry in sorted(checkpoint.files.items()):
            target = (dest / rel).resolve()
            if root not in target.parents:
                raise IntegrityError(f"{self.store.uri(checkpoint.key)} names {rel!r}, outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(self.object_key(entry["sha256"]), target, sha256=entry["sha256"])
            total += int(entry["size"])
        return total

    def delete_all(self) -> int:
        """Remove every checkpoint of the job: manifests first, so no half-deleted one can be restored."""
        count = 0
        for number in reversed(self.numbers()):
            self.store.delete(f"{self.prefix}c{number:06d}.json")
            count += 1
        return count + self.store.delete_prefix(self.prefix)


def sync_once(checkpoints: CheckpointStore, src: Path, attempt: int, previous: Checkpoint | None = None,
              limit: RateLimit | None = None, seen: Seen | None = None,
              staging_root: Path | None = None) -> Checkpoint | None:
    """Snapshot ``src`` and commit it as the next checkpoint when it changed; ``seen`` (kept by the caller
    between copies) learns the files now in the dataspace."""
    if not src.is_dir():
        return None
    if staging_root is not None:
        staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="aidi-ckpt-", dir=staging_root))
    try:
        snap = take_snapshot(src, staging, seen)
        try:
            committed = checkpoints.commit(snap, attempt, limit=limit, previous=previous)
        except IntegrityError:
            if seen is not None:
                seen.clear()  # an object went missing: read and send everything again next time
            raise
        if seen is not None:
            seen.update({rel: (snap.identity[rel], entry) for rel, entry in snap.files.items()})
        return committed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_chief(rank_file: Path | None, worker_index: int) -> bool:
    """Whether this pod's trainer is the one whose checkpoints count (see ``RANK_FILE_ENV``)."""
    try:
        if rank_file is not None:
            return rank_file.read_text().strip() == "0"
    except FileNotFoundError:
        pass
    return worker_index == 0


def has_new_checkpoint(src: Path, seen: dict[str, float]) -> bool:
    """True when a progress file, a finished step's params or a records file changed since ``seen`` (updated)."""
    changed = False
    for pattern in (f"*{_PROGRESS}", f"*{_LAST}", "*.jsonl", "metrics.json"):
        for path in src.glob(pattern):
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if seen.get(path.name) != mtime:
                seen[path.name] = mtime
                changed = True
    return changed

