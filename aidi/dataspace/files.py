"""Local files of a dataset: which files an upload sends, their sha256, and record counts of ``.rec`` files."""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

from aidi.errors import NotFoundError, UsageError
from aidi.recordio import MAGIC, RecordIOError

_CHUNK = 1 << 20
_FRAME_HEAD = struct.Struct("<II")  # magic, lrec (2-bit continuation flag | 29-bit length)
_LENGTH_MASK = (1 << 29) - 1


def dataset_files(path: Path, reserved: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """The (relative path, file) pairs an upload of ``path`` sends: the file itself, or every file below
    the folder (symlinks followed), sorted by relative path. Top-level names in ``reserved`` are refused."""
    if not path.exists():
        raise NotFoundError(f"{path} does not exist; give a file or a folder of files to upload with -f")
    if path.is_file():
        pairs = [(path.name, path)]
    else:
        pairs = []
        seen: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            # A symlink back up the tree would make the walk endless: visit each real folder once.
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames.sort()
            for filename in filenames:
                file = Path(dirpath) / filename
                if file.is_file():
                    pairs.append((file.relative_to(path).as_posix(), file))
        if not pairs:
            raise UsageError(f"{path} holds no files; nothing to upload")
    pairs.sort(key=lambda pair: pair[0])
    for rel, _ in pairs:
        if rel in reserved:
            raise UsageError(f"{path / rel}: the name {rel} is reserved for the dataspace's own bookkeeping; "
                             "rename the file")
    return pairs


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def count_records(path: Path) -> int:
    """Records in a dmlc RecordIO file (a record split into several frames counts once).

    Only the 8-byte frame headers are looked at (through a memory map) and payloads are skipped:
    ``aidi.recordio.RecordReader`` would read every payload, a second pass over data the upload reads
    anyway to hash it.
    """
    if path.stat().st_size == 0:
        return 0
    with open(path, "rb") as src, mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        return count_records_in(buffer, path)


def count_records_in(buffer: bytes | mmap.mmap, path: Path) -> int:
    """Records in the RecordIO bytes ``buffer`` (read from ``path``, named in errors)."""
    count = offset = 0
    size = len(buffer)
    while offset < size:
        if offset + _FRAME_HEAD.size > size:
            raise RecordIOError(f"{path}: truncated frame header at byte {offset}; the file is incomplete: repack it")
        magic, lrec = _FRAME_HEAD.unpack_from(buffer, offset)
        if magic != MAGIC:
            raise RecordIOError(f"{path}: not RecordIO (expected magic 0x{MAGIC:08x} at byte {offset}, got "
                                f"0x{magic:08x}); repack it, or rename it if it is not a .rec file")
        length = lrec & _LENGTH_MASK
        if offset + _FRAME_HEAD.size + length > size:
            raise RecordIOError(f"{path}: the record at byte {offset} runs past the end of the file; the file "
                                "is incomplete: repack it")
        if lrec >> 29 in (0, 1):  # a whole record, or the first frame of a split one
            count += 1
        offset += _FRAME_HEAD.size + ((length + 3) & ~3)
    return count
