"""Versioned datasets on an object store, in the layout of docs/architecture.md ("Dataspace layout").

    datasets/<name>/<type>/<version>/<relative path of each file>
    datasets/<name>/<type>/<version>/_manifest.json    written last: the version exists once this does

Versions are ``v1``, ``v2``, ...; ``latest`` is the newest complete version; versions are immutable.
An upload writes its files straight into the next free version prefix, marked ``_pending.json``; until
the manifest is written, nothing lists, resolves or downloads that version, and re-running the same
upload resumes into it (files already stored with the same sha256 are skipped).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidi.dataspace.store import ObjectStore

DATASET_TYPES = ("trainset", "valset", "testset", "dataset", "rec")
# Ground truth and predictions bound to an image dataset (`hitc dataspace upload -d NAME -t gt|pr`).
BINDING_TYPES = ("gt", "pr")
LATEST = "latest"
MANIFEST = "_manifest.json"
PENDING = "_pending.json"
DELETED = "_deleted.json"


@dataclass
class TransferProgress:
    """Counts of a running upload or download, passed to the ``progress`` callback (at most a few times a
    second, from any thread)."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_skipped: int = 0  # already present with the same sha256
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

    def upload_dataset(self, name: str, type: str, path: str | os.PathLike[str], *, jobs: int | None = None,
                       progress: ProgressCallback | None = None, binds: dict[str, Any] | None = None,
                       ) -> TransferResult:
        """Upload a file, or every file below a folder (with its relative path), as the next version of
        ``name``/``type``; return what was done. The manifest is written last; an interrupted upload is
        invisible and resumes when called again with the same content. If the latest version already holds
        exactly these files, nothing is uploaded and ``result.unchanged`` is true."""
        raise NotImplementedError

    def bind_annotations(self, dataset: str, kind: str, json_file: str | os.PathLike[str], *,
                         progress: ProgressCallback | None = None) -> TransferResult:
        """Store ground truth (``kind="gt"``) or predictions (``"pr"``) JSON for the image dataset ``dataset``
        as a new version of ``dataset``/``kind``; its manifest's ``binds`` names the dataset versions."""
        raise NotImplementedError

    def resolve(self, name: str, type: str, version: str = LATEST) -> Manifest:
        """The manifest of ``version`` (``latest``: the newest complete one); ``NotFoundError`` naming what
        exists when the dataset, type or version does not."""
        raise NotImplementedError

    def versions(self, name: str, type: str) -> list[str]:
        """Complete versions of ``name``/``type``, oldest first."""
        raise NotImplementedError

    def download_dataset(self, name: str, type: str, version: str = LATEST, dest: str | os.PathLike[str] = ".",
                         *, jobs: int | None = None, progress: ProgressCallback | None = None) -> TransferResult:
        """Download the version's files into ``dest`` (``dest/<relative path>``), verifying every sha256.
        Files already in ``dest`` with the right sha256 are kept (a re-run resumes)."""
        raise NotImplementedError

    def list_datasets(self, name: str | None = None) -> list[DatasetSummary]:
        """Every dataset name/type with complete versions (only ``name``'s when given)."""
        raise NotImplementedError

    def delete_version(self, name: str, type: str, version: str) -> int:
        """Remove a version (complete or abandoned); returns the number of objects removed. The manifest goes
        first, so the version disappears at once; the version number is never reused."""
        raise NotImplementedError

    def version_prefix(self, name: str, type: str, version: str) -> str:
        """``datasets/<name>/<type>/<version>/``."""
        return f"datasets/{name}/{type}/{version}/"

    def close(self) -> None:
        self.store.close()


def dataset_files(path: Path) -> list[tuple[str, Path]]:
    """The (relative path, file) pairs an upload of ``path`` sends: the file itself, or every file below
    the folder in sorted order."""
    raise NotImplementedError
