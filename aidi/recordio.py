"""MXNet-compatible RecordIO without MXNet: dmlc framing, ``IRHeader``, ``.idx`` and our label layouts.

Byte-compatible with ``mx.recordio`` (which wraps dmlc-core's ``RecordIOWriter``): a record is written
as one or more frames ``[magic][lrec][data][zero padding to 4 bytes]``, where ``lrec`` holds a 2-bit
continuation flag in its top bits and the frame length in the low 29. dmlc splits a record wherever
the magic word occurs at a 4-byte-aligned offset of the payload (flags 1 = first part, 2 = middle,
3 = last; the reader puts the magic word back between the parts), so readers can always resync on the
magic word. Records of 2^29 bytes or more are rejected, as dmlc rejects them.

The record layouts (docs/architecture.md, "RecordIO records"):

* detection: labels ``[4, 5, width, height, cls, xmin, ymin, xmax, ymax, ...]`` (coordinates
  normalised to 0..1), payload = JPEG. This is what ``mx.io.ImageDetRecordIter`` reads.
* parsing: ``flag = 2``, labels ``[image_nbytes, mask_nbytes]``, payload = JPEG followed by the mask
  PNG (8-bit, one channel, pixel = class id, 255 = ignore).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import BinaryIO, NamedTuple

from aidi.errors import AidiError

_np: ModuleType | None
try:  # optional: a faster scan for the magic word; the format needs only the standard library
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with every extra that packs
    _np = None

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_BYTES = (1 << 29) - 1
_LENGTH_MASK = (1 << 29) - 1
_FRAME_HEAD = struct.Struct("<II")
_IR_FORMAT = struct.Struct("<IfQQ")

# Detection label header: [header_width, object_width, image_width, image_height].
DET_HEADER_WIDTH = 4
DET_OBJECT_WIDTH = 5
# ImageDetRecordIter refuses a label without at least one object; an image with no objects carries
# one padding object of -1s, the value the iterator itself pads with. Readers skip cls < 0.
DET_PADDING_OBJECT = (-1.0, -1.0, -1.0, -1.0, -1.0)
PARSING_FLAG = 2
FLOAT32_EXACT_INT = 1 << 24
MASK_IGNORE = 255


class RecordIOError(AidiError):
    """A RecordIO file or record that is not what the format promises."""


class RecordTooLarge(RecordIOError):
    """A record over dmlc RecordIO's 2^29-byte limit."""


# --------------------------------------------------------------------------------------- framing


def _aligned_magic(record: bytes | bytearray | memoryview) -> list[int]:
    """Offsets of the magic word at 4-byte-aligned positions, where dmlc splits a record."""
    if _np is not None and len(record) >= 256:
        # Comparing aligned words is several times faster than bytes.find, which stops at every 0x0a.
        words = _np.frombuffer(record, dtype="<u4", count=len(record) // 4)
        return [4 * int(i) for i in _np.flatnonzero(words == MAGIC)]
    if isinstance(record, memoryview):
        record = record.tobytes()
    found, cursor = [], record.find(MAGIC_BYTES)
    while cursor != -1 and cursor + 4 <= len(record):
        if cursor % 4 == 0:
            found.append(cursor)
            cursor = record.find(MAGIC_BYTES, cursor + 4)
        else:
            cursor = record.find(MAGIC_BYTES, cursor + 1)
    return found


def frame(record: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
    """The frames dmlc's ``RecordIOWriter::WriteRecord`` writes for ``record``, as byte chunks."""
    size = len(record)
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"record of {size} bytes is over RecordIO's limit of {MAX_RECORD_BYTES} bytes (2^29 - 1, set by "
            "dmlc-core, which MXNet uses to read it); shrink the image (set `resize` in the pack config) "
            "or split the sample")
    if not isinstance(record, bytes | bytearray):
        record = bytes(record)  # for .find()
    view = memoryview(record)
    chunks: list[bytes | memoryview] = []
    start = 0
    for cursor in _aligned_magic(record):
        flag = 1 if start == 0 else 2
        chunks.append(_FRAME_HEAD.pack(MAGIC, (flag << 29) | (cursor - start)))
        chunks.append(view[start:cursor])
        start = cursor + 4
    length = size - start
    chunks.append(_FRAME_HEAD.pack(MAGIC, ((3 if start else 0) << 29) | length))
    chunks.append(view[start:])
    if length % 4:
        chunks.append(b"\0" * (4 - length % 4))
    return chunks


def frame_record(*parts: bytes | bytearray | memoryview) -> bytes:
    """The record ``b"".join(parts)`` framed as it goes into a ``.rec`` file (for ``RecordWriter.write_framed``).

    Given in parts (a header, then payloads), it is framed in one copy when every part but the last is
    4-byte aligned and holds no magic word, which is nearly always: the parts are scanned one by one,
    since an aligned word then never straddles two of them.
    """
    size = sum(map(len, parts))
    if len(parts) > 1 and size <= MAX_RECORD_BYTES and all(len(p) % 4 == 0 for p in parts[:-1]) \
            and not any(_aligned_magic(p) for p in parts):
        padding = b"\0" * (-size % 4)
        return b"".join((_FRAME_HEAD.pack(MAGIC, size), *parts, padding))
    return b"".join(frame(b"".join(parts) if len(parts) != 1 else parts[0]))


# In a framed record, IRHeader.id sits after the frame head (magic, lrec) and the header's flag and label.
_FRAMED_ID = slice(8 + 8, 8 + 16)
_ID_WORDS = struct.Struct("<II")


def _framed_id(id: int) -> bytes:
    """``id`` as it goes into a framed record, if setting it cannot change the framing."""
    if not 0 <= id < 1 << 64 or MAGIC in _ID_WORDS.unpack(struct.pack("<Q", id)):
        raise RecordIOError(f"id {id} cannot be set in place: it must be below 2^64 and hold no magic word")
    return struct.pack("<Q", id)


class RecordWriter:
    """Append records to a ``.rec`` file; ``write`` returns the record's byte offset (for the ``.idx``).

    With ``sha256=True`` the file's digest is computed as it is written (``hexdigest()``), which spares
    reading a large file back. With ``pipelined=True`` records are gathered into blocks of a few MiB,
    and each block is written on one thread while another hashes it (a pair of threads per file): the packer's
    single writer otherwise spends most of its time in ``write`` and ``sha256`` one after the other,
    while the encoding threads wait for it. Big blocks matter: a thread that gives up the GIL for every
    record waits up to a switch interval to get it back. A pipelined writer holds on to the records it
    is given until their block is written: pass ``bytes``, or do not change a buffer once written.
    Blocks are copied into a few buffers used over and over: a fresh 4 MiB ``bytes`` for every block
    was memory the allocator handed back to the system when freed and faulted in again for the next
    one, which on a virtual machine cost more than the copy (docs/benchmarks.md, "Packing").
    """

    BLOCK_BYTES = 4 << 20
    IN_FLIGHT = 3  # blocks written or hashed before the caller waits: bounds memory to ~4 buffers of 5 MiB

    def __init__(self, path: str | os.PathLike[str], sha256: bool = False, pipelined: bool = False) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._offset = 0
        self._digest = hashlib.sha256() if sha256 else None
        self._pending: list[bytes | memoryview] | None = [] if pipelined else None
        self._pending_bytes = 0
        self._threads: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        # Blocks being written and hashed, each with its buffer; a buffer is reused once both are done.
        self._in_flight: deque[tuple[bytearray, list[Future[object]]]] = deque()
        self._free: list[bytearray] = []

    def write(self, record: bytes | bytearray | memoryview) -> int:
        return self._append(frame(record))

    def write_framed(self, framed: bytes | bytearray | memoryview, id: int | None = None) -> int:
        """Append a record framed by ``frame_record``; with ``id``, set its IRHeader id on the way.

        Setting the id in place is safe because dmlc splits a record only at magic words: neither the
        old id nor the new one holds one, so the frames stay the same.
        """
        view = memoryview(framed)
        if id is None:
            return self._append((view,))
        magic, lrec = _FRAME_HEAD.unpack_from(view)
        if magic != MAGIC or lrec >> 29 not in (0, 1) or (lrec & _LENGTH_MASK) < 16:
            raise RecordIOError("expected a record framed by frame_record whose first frame holds its IRHeader")
        if MAGIC in _ID_WORDS.unpack(view[_FRAMED_ID]):
            raise RecordIOError("the framed record's current id holds a magic word; frame it again instead")
        return self._append((view[:_FRAMED_ID.start], _framed_id(id), view[_FRAMED_ID.stop:]))

    def _append(self, chunks: Sequence[bytes | memoryview]) -> int:
        offset = self._offset
        if self._pending is not None:
            self._pending.extend(chunks)
            size = sum(map(len, chunks))
            self._pending_bytes += size
            self._offset += size
            if self._pending_bytes >= self.BLOCK_BYTES:
                self._flush_block()
            return offset
        for chunk in chunks:
            self._write(chunk)
            if self._digest:
                self._digest.update(chunk)
            self._offset += len(chunk)
        return offset

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            # A full disk or a lost mount surfaces here (or on another thread): name the file.
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def _flush_block(self) -> None:
        if not self._pending:
            return
        if self._threads is None:
            self._threads = (ThreadPoolExecutor(1, "rec-write"), ThreadPoolExecutor(1, "rec-hash"))
        # Blocks already written and hashed give back their buffers first, so that usually two buffers do.
        while self._in_flight and (len(self._in_flight) >= self.IN_FLIGHT
                                   or all(future.done() for future in self._in_flight[0][1])):
            self._retire()
        size = self._pending_bytes
        buffer = self._free.pop() if self._free else bytearray()
        if len(buffer) < size:
            buffer = bytearray(max(size, self.BLOCK_BYTES + (self.BLOCK_BYTES >> 2)))
        position = 0
        for chunk in self._pending:
            buffer[position:position + len(chunk)] = chunk
            position += len(chunk)
        self._pending.clear()
        self._pending_bytes = 0
        block = memoryview(buffer)[:size]
        futures: list[Future[object]] = [self._threads[0].submit(self._write, block)]
        if self._digest:
            futures.append(self._threads[1].submit(self._digest.update, block))
        self._in_flight.append((buffer, futures))

    def _retire(self) -> None:
        """Wait for the oldest block to be written and hashed, and keep its buffer for a later block."""
        buffer, futures = self._in_flight.popleft()
        for future in futures:
            future.result()  # raises the thread's error (disk full, ...) here
        self._free.append(buffer)

    def _drain(self) -> None:
        if self._pending is None:
            return
        try:
            self._flush_block()
            while self._in_flight:
                self._retire()
        finally:
            if self._threads:
                for pool in self._threads:
                    pool.shutdown(cancel_futures=True)
                self._threads = None
            self._free.clear()

    def hexdigest(self) -> str:
        if self._digest is None:
            raise ValueError("this writer was opened without sha256=True")
        self._drain()
        return self._digest.hexdigest()

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class IndexedRecordWriter:
    """A ``.rec`` and its ``.idx`` (lines ``key\\toffset``), written side by side as ``mx.recordio`` does."""

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str],
                 sha256: bool = False, pipelined: bool = False) -> None:
        self.records = RecordWriter(rec_path, sha256, pipelined)
        self._idx = open(idx_path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._idx_digest = hashlib.sha256() if sha256 else None
        self.count = 0

    def write(self, key: int, record: bytes | bytearray | memoryview) -> int:
        return self._index(key, self.records.write(record))

    def write_framed(self, key: int, framed: bytes | bytearray | memoryview, set_id: bool = True) -> int:
        """Append a record framed by ``frame_record``, setting its IRHeader id to ``key`` (as im2rec does)."""
        return self._index(key, self.records.write_framed(framed, key if set_id else None))

    def _index(self, key: int, offset: int) -> int:
        line = f"{key}\t{offset}\n".encode()
        self._idx.write(line)
        if self._idx_digest:
            self._idx_digest.update(line)
        self.count += 1
        return offset

    def hexdigests(self) -> tuple[str, str]:
        """sha256 of the ``.rec`` and of the ``.idx`` (opened with ``sha256=True``)."""
        if self._idx_digest is None:
            raise ValueError("this writer was opened without sha256=True")
        return self.records.hexdigest(), self._idx_digest.hexdigest()

    def close(self) -> None:
        try:
            self.records.close()
        finally:
            self._idx.close()

    def __enter__(self) -> IndexedRecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class RecordReader:
    """Read records from a ``.rec`` file: iterate them, or ``read_at(offset)`` one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__

    def read_at(self, offset: int) -> bytes:
        self._file.seek(offset)
        record = self._read_next()
        if record is None:
            raise RecordIOError(f"{self.path}: no record at offset {offset} (end of file); the .idx does not "
                                "belong to this .rec — repack the scene")
        return record

    def __iter__(self) -> Iterator[bytes]:
        self._file.seek(0)
        while (record := self._read_next()) is not None:
            yield record

    def _read_next(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            where = self._file.tell()
            head = self._file.read(8)
            if not head and not parts:
                return None
            if len(head) != 8:
                raise RecordIOError(f"{self.path}: truncated frame header at byte {where}; the file is incomplete")
            magic, lrec = _FRAME_HEAD.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(f"{self.path}: expected magic 0x{MAGIC:08x} at byte {where}, got 0x{magic:08x}; "
                                    "not a RecordIO file, or a wrong offset in the .idx")
            flag, length = lrec >> 29, lrec & _LENGTH_MASK
            data = self._file.read((length + 3) & ~3)
            if len(data) < length:
                raise RecordIOError(f"{self.path}: record at byte {where} needs {length} bytes, the file has "
                                    f"{len(data)}; the file is incomplete")
            expected = (0, 1) if not parts else (2, 3)
            if flag not in expected:
                raise RecordIOError(f"{self.path}: expected continuation flag {' or '.join(map(str, expected))} "
                                    f"at byte {where}, got {flag}")
            parts.append(data[:length])
            if flag in (0, 3):
                return MAGIC_BYTES.join(parts) if len(parts) > 1 else parts[0]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike[str]) -> dict[int, int]:
    """The ``.idx`` file as ``{key: offset}``, in file order."""
    index: dict[int, int] = {}
    with open(idx_path, encoding="ascii") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split("\t")
            if len(fields) != 2:
                raise RecordIOError(f"{idx_path}:{number}: expected 'key<TAB>offset', got {line.rstrip()!r}")
            index[int(fields[0])] = int(fields[1])
    return index


class IndexedRecordReader:
    """Random access by key through the ``.idx``, as ``mx.recordio.MXIndexedRecordIO`` gives."""

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.index = read_index(idx_path)
        self.keys = list(self.index)
        self.records = RecordReader(rec_path)

    def __len__(self) -> int:
        return len(self.keys)

    def read_idx(self, key: int) -> bytes:
        try:
            offset = self.index[key]
        except KeyError:
            raise RecordIOError(f"key {key} is not in the index ({len(self.keys)} records)") from None
        return self.records.read_at(offset)

    def __iter__(self) -> Iterator[bytes]:
        for key in self.keys:
            yield self.read_idx(key)

    def close(self) -> None:
        self.records.close()

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------------------------- IRHeader


class IRHeader(NamedTuple):
    """MXNet's image-record header. ``label`` is used only when ``flag == 0``."""

    flag: int
    label: float
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes, labels: Sequence[float] | None = None) -> bytes:
    """``mx.recordio.pack``: the header, then ``labels`` as float32 when given (flag = their count)."""
    if labels is None:
        return _IR_FORMAT.pack(header.flag, header.label, header.id, header.id2) + payload
    head = _IR_FORMAT.pack(len(labels), 0.0, header.id, header.id2)
    return b"".join((head, struct.pack(f"<{len(labels)}f", *labels), payload))


def unpack(record: bytes) -> tuple[IRHeader, tuple[float, ...], memoryview]:
    """``mx.recordio.unpack``: the header, its float labels (empty when flag is 0), and the payload."""
    if len(record) < _IR_FORMAT.size:
        raise RecordIOError(f"expected a record of at least {_IR_FORMAT.size} bytes (IRHeader), got {len(record)}")
    header = IRHeader(*_IR_FORMAT.unpack_from(record))
    start = _IR_FORMAT.size
    end = start + 4 * header.flag
    if len(record) < end:
        raise RecordIOError(f"IRHeader says {header.flag} labels ({4 * header.flag} bytes), the record has "
                            f"{len(record) - start} bytes after its header")
    labels = struct.unpack_from(f"<{header.flag}f", record, start) if header.flag else ()
    return header, labels, memoryview(record)[end:]


# --------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class DetectionRecord:
    """One detection sample: the JPEG, the image size, and objects ``(cls, xmin, ymin, xmax, ymax)``."""

    id: int
    id2: int
    width: int
    height: int
    objects: list[tuple[float, float, float, float, float]]
    image: bytes


@dataclass(frozen=True)
class ParsingRecord:
    """One parsing sample: the JPEG and the mask PNG (pixel = class id, 255 = ignore)."""

    id: int
    id2: int
    image: bytes
    mask: bytes


def detection_labels(width: int, height: int,
                     objects: Sequence[tuple[float, float, float, float, float]]) -> list[float]:
    """The float labels of a detection record; coordinates in ``objects`` already normalised."""
    labels = [float(DET_HEADER_WIDTH), float(DET_OBJECT_WIDTH), float(width), float(height)]
    for obj in objects or [DET_PADDING_OBJECT]:
        if len(obj) != DET_OBJECT_WIDTH:
            raise ValueError(f"expected objects of {DET_OBJECT_WIDTH} values (cls, xmin, ymin, xmax, ymax), got {obj}")
        labels.extend(obj)
    return labels


def pack_detection(image: bytes, width: int, height: int,
                   objects: Sequence[tuple[float, float, float, float, float]], id: int = 0, id2: int = 0) -> bytes:
    return pack(IRHeader(0, 0.0, id, id2), image, detection_labels(width, height, objects))


def unpack_detection(record: bytes) -> DetectionRecord:
    header, labels, payload = unpack(record)
    if len(labels) < DET_HEADER_WIDTH + DET_OBJECT_WIDTH:
        raise RecordIOError(f"record {header.id}: expected at least {DET_HEADER_WIDTH + DET_OBJECT_WIDTH} detection "
                            f"labels, got {len(labels)} (is this a parsing record?)")
    if labels[0] != DET_HEADER_WIDTH or labels[1] != DET_OBJECT_WIDTH:
        raise RecordIOError(f"record {header.id}: expected label header width {DET_HEADER_WIDTH} and object width "
                            f"{DET_OBJECT_WIDTH}, got {labels[0]:g} and {labels[1]:g}")
    body = labels[DET_HEADER_WIDTH:]
    if len(body) % DET_OBJECT_WIDTH:
        raise RecordIOError(f"record {header.id}: expected object labels in groups of {DET_OBJECT_WIDTH}, got "
                            f"{len(body)} values")
    objects = [body[i:i + DET_OBJECT_WIDTH] for i in range(0, len(body), DET_OBJECT_WIDTH)]
    return DetectionRecord(header.id, header.id2, int(labels[2]), int(labels[3]),
                           [obj for obj in objects if obj[0] >= 0], bytes(payload))  # type: ignore[misc]


def parsing_head(image_nbytes: int, mask_nbytes: int, id: int = 0, id2: int = 0) -> bytes:
    """The IRHeader and labels of a parsing record; the JPEG and the PNG follow."""
    for what, size in (("image", image_nbytes), ("mask", mask_nbytes)):
        # The sizes travel as float32 labels, exact only up to 2^24.
        if size > FLOAT32_EXACT_INT:
            raise RecordTooLarge(f"the {what} is {size} bytes; a parsing record holds at most {FLOAT32_EXACT_INT} "
                                 "bytes per part (its size is a float32 label); set `resize`")
    return pack(IRHeader(0, 0.0, id, id2), b"", [float(image_nbytes), float(mask_nbytes)])


def pack_parsing(image: bytes, mask_png: bytes, id: int = 0, id2: int = 0) -> bytes:
    return parsing_head(len(image), len(mask_png), id, id2) + image + mask_png


def unpack_parsing(record: bytes) -> ParsingRecord:
    header, labels, payload = unpack(record)
    if header.flag != PARSING_FLAG:
        raise RecordIOError(f"record {header.id}: expected a parsing record (flag {PARSING_FLAG}), got flag "
                            f"{header.flag} (is this a detection record?)")
    image_nbytes, mask_nbytes = int(labels[0]), int(labels[1])
    if image_nbytes + mask_nbytes != len(payload):
        raise RecordIOError(f"record {header.id}: expected a payload of {image_nbytes} + {mask_nbytes} bytes, got "
                            f"{len(payload)}")
    return ParsingRecord(header.id, header.id2, bytes(payload[:image_nbytes]), bytes(payload[image_nbytes:]))
