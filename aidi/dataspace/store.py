"""The object store behind the dataspace: one interface, two backends (S3 via ``minio``; a local folder).

Keys are ``/``-separated paths (``datasets/adasmini_4pe/trainset/v1/vehicle/train.rec``). Writes are
atomic per object: a reader sees the whole object or none of it. Each object can carry small string
metadata (the dataspace stores each file's ``sha256`` there).

A write with ``create_only=True`` succeeds only if the key does not exist yet, decided by the store in one
step (S3: ``If-None-Match: *``, answered 412 when the key exists; a folder: the rename under a lock), so of
two writers of the same key exactly one wins and the other gets ``ObjectExists``. This is what claims
version numbers and commits versions (aidi/dataspace/datasets.py).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aidi.errors import AidiError

# Called with the number of bytes just transferred; must be thread-safe (transfers run in parallel).
BytesCallback = Callable[[int], None]


def download_mode() -> int:
    """The mode a downloaded file gets: what open() would give under the process umask (0644 under 022).

    get_file writes through mkstemp, whose 0600 would keep a pod's fetch step (one user) from sharing the
    datasets with the trainer (another user) through their emptyDir. The umask is read, not set: setting
    it is process-wide and downloads run in threads.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


class ObjectExists(AidiError):
    """A ``create_only`` write found its key taken (by another writer, or by an earlier attempt of this one
    whose answer was lost: callers compare what is there with what they meant to write)."""

    def __init__(self, key: str, uri: str) -> None:
        super().__init__(f"{uri} exists already")
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object (or, from a non-recursive ``list``, a common prefix with ``is_dir=True``)."""

    key: str
    size: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    modified: float | None = None  # seconds since the epoch
    is_dir: bool = False

    @property
    def sha256(self) -> str | None:
        return self.metadata.get("sha256")


class ObjectStore(ABC):
    """Put, get, stat, list and delete objects by key. Every method may raise ``aidi.errors`` classes:
    ``AuthError`` (credentials refused), ``ConnectionFailed`` (server unreachable), ``NotFoundError``
    (missing bucket or key)."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """The object's address: ``s3://bucket/key`` or ``file:///root/key``."""

    @abstractmethod
    def check(self, create: bool = False) -> None:
        """Verify the store answers, accepts our credentials and has its bucket (created when ``create``)."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None,
                 progress: BytesCallback | None = None, create_only: bool = False) -> ObjectInfo:
        """Upload a local file (multipart, parts in parallel, for big files) with string ``metadata``.
        ``create_only``: raise ``ObjectExists`` instead of replacing an existing object."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str], progress: BytesCallback | None = None,
                 sha256: str | None = None) -> ObjectInfo:
        """Download to ``path`` (written to a temporary name, renamed when complete). With ``sha256``, the
        bytes are hashed on the way and an ``IntegrityError`` raised (and nothing left at ``path``) on a
        mismatch."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  create_only: bool = False) -> ObjectInfo:
        """Store a small object from memory; ``create_only`` as in ``put_file``."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a small object into memory; ``NotFoundError`` when it does not exist."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and metadata of ``key``, or ``None`` when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects whose keys start with ``prefix``, in key order. Non-recursive: the objects directly
        under ``prefix`` and one ``is_dir`` entry (key ending in ``/``) per deeper common prefix."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many."""
        count = 0
        for info in self.list(prefix, recursive=True):
            self.delete(info.key)
            count += 1
        return count

    def abort_uploads(self, prefix: str) -> int:
        """Discard unfinished multipart uploads under ``prefix`` (left by a killed upload; invisible, but they
        hold space on the server); returns how many. Stores without multipart uploads have none."""
        return 0

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections."""


def check_key(key: str) -> str:
    """Refuse keys that could escape a folder or mean two things (``..``, empty segments, a leading ``/``)."""
    parts = key.split("/")
    bad_segment = any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", "..")
    if not key or key.startswith("/") or bad_segment:
        raise ValueError(f"invalid object key {key!r}: use a relative path like 'datasets/NAME/TYPE/v1/file'")
    return key
