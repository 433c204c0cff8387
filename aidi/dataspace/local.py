"""The local-folder object store (``file:///path``): the embedded default for one machine.

Object ``KEY`` is the file ``ROOT/KEY``. Writes go to ``ROOT/.tmp/`` and are renamed into place, so a
reader never sees half a file; an object's metadata lives in ``ROOT/.meta/KEY.json``. A ``create_only``
write checks for the key and renames into place while holding ``flock`` on ``ROOT/.locks/create`` (the
data is written before, outside the lock), so two processes creating the same key cannot both win; the
kernel drops the lock of a killed process. These folders are hidden from ``list``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from aidi.dataspace.store import BytesCallback, ObjectExists, ObjectInfo, ObjectStore, check_key, download_mode
from aidi.errors import IntegrityError, NotFoundError, UsageError

_HIDDEN = (".tmp", ".meta", ".locks")
STALE_TEMP_SECONDS = 3600
_CHUNK = 1 << 20


class LocalStore(ObjectStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def uri(self, key: str = "") -> str:
        return f"file://{self.root}/{key}"

    def check(self, create: bool = False) -> None:
        if self.root.is_dir():
            if not os.access(self.root, os.W_OK):
                raise UsageError(f"dataspace folder {self.root} is not writable; fix its permissions")
            return
        if self.root.exists():
            raise UsageError(f"dataspace folder {self.root} is a file; point the endpoint at a folder")
        # The embedded default makes its folder on first use; an explicit check(create=False) still passes
        # because writing will create it.
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / f"{check_key(key)}.json"

    def _temp(self) -> tuple[int, str]:
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=tmp, prefix="put-")

    def _commit(self, key: str, temp: str, metadata: Mapping[str, str] | None, create_only: bool) -> ObjectInfo:
        if not create_only:
            return self._replace(key, temp, metadata)
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / "create", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by close, or by the kernel when the process dies
            if self._path(key).is_file():
                raise ObjectExists(key, self.uri(key))
            return self._replace(key, temp, metadata)

    def _replace(self, key: str, temp: str, metadata: Mapping[str, str] | None) -> ObjectInfo:
        target = self._path(key)
        if target.is_dir():
            os.unlink(temp)
            raise UsageError(f"cannot store object {key!r}: {target} is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta_path(key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        # Metadata first: an object is never visible with the previous object's metadata.
        meta.write_text(json.dumps(dict(metadata or {})))
        os.replace(temp, target)
        return self._info(key, target)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        meta = self._meta_path(key)
        try:
            metadata = json.loads(meta.read_text())
        except (FileNotFoundError, ValueError):
            metadata = {}
        return ObjectInfo(key=key, size=st.st_size, metadata=metadata, modified=st.st_mtime)

    def put_file(self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None,
                 progress: BytesCallback | None = None, create_only: bool = False) -> ObjectInfo:
        check_key(key)
        fd, temp = self._temp()
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            return self._commit(key, temp, metadata, create_only)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  create_only: bool = False) -> ObjectInfo:
        check_key(key)
        fd, temp = self._temp()
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return self._commit(key, temp, metadata, create_only)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def get_file(self, key: str, path: str | os.PathLike[str], progress: BytesCallback | None = None,
                 sha256: str | None = None) -> ObjectInfo:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(f"{self.uri(key)} does not exist")
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.fchmod(fd, download_mode())
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    if progress:
                        progress(len(chunk))
            if sha256 and digest.hexdigest() != sha256:
                raise IntegrityError(f"{self.uri(key)}: sha256 is {digest.hexdigest()}, the manifest says {sha256}; "
                                     "the stored copy is corrupt: re-upload that version")
            os.replace(temp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return self._info(key, source)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)} does not exist") from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        # Only the folder the prefix names is read; the rest of the prefix filters its entries.
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        entries: list[ObjectInfo] = []
        if recursive:
            for dirpath, dirnames, filenames in os.walk(start):
                if Path(dirpath) == self.root:
                    dirnames[:] = [d for d in dirnames if d not in _HIDDEN]
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                for filename in filenames:
                    key = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                    if key.startswith(prefix):
                        entries.append(self._info(key, Path(dirpath) / filename))
        else:
            for child in start.iterdir():
                key = f"{base_dir}/{child.name}" if base_dir else child.name
                if not key.startswith(prefix) or (start == self.root and child.name in _HIDDEN):
                    continue
                entries.append(ObjectInfo(key=key + "/", is_dir=True) if child.is_dir()
                               else self._info(key, child))
        entries.sort(key=lambda info: info.key)
        yield from entries

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._meta_path(key).unlink()
        # Drop folders emptied by the delete, so an empty "version folder" does not linger.
        for folder in (path.parent, self._meta_path(key).parent):
            while folder not in (self.root, self.root / ".meta") and folder.is_relative_to(self.root):
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    def abort_uploads(self, prefix: str) -> int:
        """Remove temporary files of writes that were killed (untouched for an hour). Their names do not
        say which key they were for, so this looks past ``prefix``."""
        removed = 0
        cutoff = time.time() - STALE_TEMP_SECONDS
        for temp in (self.root / ".tmp").glob("put-*"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        return removed

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        if prefix.endswith("/"):
            shutil.rmtree(self.root / prefix.rstrip("/"), ignore_errors=True)
        return count
