"""Local files of a dataset: which files an upload sends, their sha256, and record counts of ``.rec`` files."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

from aidi.errors import NotFoundError, UsageError

_CHUNK = 1 << 20
RESERVED_NAMES = ("_manifest.json", "_pending.json", "_deleted.json")


def dataset_files(path: Path) -> list[tuple[str, Path]]:
    """The (relative path, file) pairs an upload of ``path`` sends: the file itself, or every file below
    the folder (symlinks followed), sorted by relative path."""
    if not path.exists():
        raise NotFoundError(f"{path} does not exist; give a file or a folder of files to upload with -f")
    if path.is_file():
        pairs = [(path.name, path)]
    else:
        pairs = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for filename in filenames:
                file = Path(dirpath) / filename
                if file.is_file():
                    pairs.append((file.relative_to(path).as_posix(), file))
        if not pairs:
            raise UsageError(f"{path} holds no files; nothing to upload")
    pairs.sort(key=lambda pair: pair[0])
    for rel, _ in pairs:
        if rel in RESERVED_NAMES:
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
    """Records in a dmlc RecordIO file (a record split in several frames counts once)."""
    try:
        from aidi.recordio import RecordReader
    except ImportError:
        return _count_frames(path)
    with RecordReader(path) as reader:
        return sum(1 for _ in reader)


def _count_frames(path: Path) -> int:
    # The framing alone: [magic][lrec: 2-bit flag | 29-bit length][data padded to 4]; flags 0 (whole)
    # and 1 (first part) start a record. Payloads are skipped, not read.
    head = struct.Struct("<II")
    count = 0
    size = path.stat().st_size
    with open(path, "rb") as src:
        while (offset := src.tell()) < size:
            raw = src.read(8)
            if len(raw) != 8:
                raise UsageError(f"{path}: truncated RecordIO frame at byte {offset}; the file is incomplete, "
                                 "repack it")
            magic, lrec = head.unpack(raw)
            if magic != 0xCED7230A:
                raise UsageError(f"{path}: not a RecordIO file (expected magic 0xced7230a at byte {offset}, got "
                                 f"0x{magic:08x}); repack it or give it another extension than .rec")
            if lrec >> 29 in (0, 1):
                count += 1
            src.seek(((lrec & ((1 << 29) - 1)) + 3) & ~3, os.SEEK_CUR)
    return count
