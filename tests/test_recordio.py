"""aidi.recordio against MXNet itself: same bytes as mx.recordio writes, and each reads the other's."""

from __future__ import annotations

import hashlib
import random
import struct

import mxnet as mx
import numpy as np
import pytest

from aidi import recordio


def _records() -> list[bytes]:
    """Random payloads with the magic word planted at aligned and unaligned offsets (dmlc splits there)."""
    rng = random.Random(3)
    records = [b"", b"x", recordio.MAGIC_BYTES, recordio.MAGIC_BYTES * 3, recordio.MAGIC_BYTES + b"ab",
               b"ab" + recordio.MAGIC_BYTES + b"cd"]
    for _ in range(60):
        size = rng.randrange(0, 64)
        data = bytearray(rng.randbytes(size))
        for _ in range(rng.randrange(0, 4)):
            if size >= 4:
                at = rng.randrange(0, size - 3)
                data[at:at + 4] = recordio.MAGIC_BYTES
        records.append(bytes(data))
    for _ in range(6):  # long enough for the numpy scan
        data = bytearray(rng.randbytes(rng.randrange(256, 2000)))
        for at in (0, 4 * rng.randrange(1, 60), 4 * rng.randrange(1, 60) + 1, len(data) - 4):
            data[at:at + 4] = recordio.MAGIC_BYTES
        records.append(bytes(data))
    return records


def test_writer_matches_mxnet_byte_for_byte_and_both_read_each_other(tmp_path):
    records = _records()
    with recordio.IndexedRecordWriter(tmp_path / "ours.rec", tmp_path / "ours.idx") as writer:
        for key, record in enumerate(records):
            writer.write(key, record)
    theirs = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    for key, record in enumerate(records):
        theirs.write_idx(key, record)
    theirs.close()

    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_text() == (tmp_path / "mx.idx").read_text()
    mx_reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ours.idx"), str(tmp_path / "ours.rec"), "r")
    assert [mx_reader.read_idx(key) for key in range(len(records))] == records
    with recordio.IndexedRecordReader(tmp_path / "mx.rec", tmp_path / "mx.idx") as ours:
        assert [ours.read_idx(key) for key in range(len(records))] == records
    with recordio.RecordReader(tmp_path / "mx.rec") as sequential:
        assert list(sequential) == records


def test_a_record_over_the_2_29_byte_limit_is_refused_clearly():
    huge = bytes(1 << 29)  # calloc'd: no pages are touched
    with pytest.raises(recordio.RecordTooLarge, match=r"536870912 bytes is over RecordIO's limit of 536870911 .*resize"
                       ):
        recordio.frame(huge)
    assert len(b"".join(bytes(c) for c in recordio.frame(memoryview(huge)[:1000]))) == 1008


def test_irheader_pack_and_unpack_match_mxnet():
    scalar = mx.recordio.pack(mx.recordio.IRHeader(0, 3.5, 7, 9), b"payload")
    assert recordio.pack(recordio.IRHeader(0, 3.5, 7, 9), b"payload") == scalar
    labels = [4, 5, 640, 360, 1, 0.1, 0.2, 0.3, 0.4]
    vector = mx.recordio.pack(mx.recordio.IRHeader(0, np.array(labels, np.float32), 11, 12), b"jpeg")
    assert recordio.pack_detection(b"jpeg", 640, 360, [(1, 0.1, 0.2, 0.3, 0.4)], 11, 12) == vector
    header, floats, payload = recordio.unpack(vector)
    assert (header.flag, header.id, header.id2, bytes(payload)) == (9, 11, 12, b"jpeg")
    assert np.array_equal(np.array(floats, np.float32), np.array(labels, np.float32))


def test_detection_and_parsing_layouts_round_trip():
    record = recordio.unpack_detection(recordio.pack_detection(b"J", 10, 20, [(2, 0.5, 0.25, 0.75, 1.0)], 3, 4))
    assert (record.id, record.id2, record.width, record.height, record.image) == (3, 4, 10, 20, b"J")
    assert record.objects == [(2.0, 0.5, 0.25, 0.75, 1.0)]
    empty = recordio.pack_detection(b"J", 10, 20, [])
    assert struct.unpack_from("<I", empty)[0] == 9  # one padding object: ImageDetRecordIter needs one
    assert recordio.unpack_detection(empty).objects == []
    parsing = recordio.unpack_parsing(recordio.pack_parsing(b"jpeg-bytes", b"png", 5, 6))
    assert (parsing.image, parsing.mask, parsing.id, parsing.id2) == (b"jpeg-bytes", b"png", 5, 6)
    header, payload = mx.recordio.unpack(recordio.pack_parsing(b"jpeg-bytes", b"png"))
    assert header.flag == 2 and list(header.label) == [10.0, 3.0] and payload == b"jpeg-bytespng"


def test_readers_say_what_they_expected():
    with pytest.raises(recordio.RecordIOError, match="expected label header width 4 and object width 5, got 2 and 5"):
        recordio.unpack_detection(recordio.pack(recordio.IRHeader(0, 0, 1, 0), b"", [2, 5, 1, 1, 0, 0, 0, 1, 1]))
    with pytest.raises(recordio.RecordIOError, match="expected a parsing record \\(flag 2\\), got flag 9"):
        recordio.unpack_parsing(recordio.pack_detection(b"J", 1, 1, [(0, 0, 0, 1, 1)]))
    with pytest.raises(recordio.RecordIOError, match="expected a payload of 4 \\+ 3 bytes, got 6"):
        recordio.unpack_parsing(recordio.pack(recordio.IRHeader(0, 0, 1, 0), b"abcdef", [4, 3]))


def test_reader_refuses_garbage_and_truncation(tmp_path):
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(recordio.RecordIOError, match="expected magic 0xced7230a at byte 0, got 0x00000000"), \
            recordio.RecordReader(bad) as reader:
        list(reader)
    good = tmp_path / "good.rec"
    with recordio.RecordWriter(good) as writer:
        writer.write(b"0123456789")
    good.write_bytes(good.read_bytes()[:12])
    with pytest.raises(recordio.RecordIOError, match="needs 10 bytes, the file has 4"), \
            recordio.RecordReader(good) as reader:
        list(reader)


@pytest.mark.parametrize("pipelined", [False, True], ids=["inline", "pipelined"])
def test_write_framed_sets_the_id_and_matches_mxnet(tmp_path, monkeypatch, pipelined):
    # Small blocks, so the pipelined writer hashes and writes many of them on its threads.
    monkeypatch.setattr(recordio.RecordWriter, "BLOCK_BYTES", 512)
    payloads = [rec for rec in _records() if len(rec) > 8][:20]
    mx_writer = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    with recordio.IndexedRecordWriter(tmp_path / "ours.rec", tmp_path / "ours.idx", sha256=True,
                                      pipelined=pipelined) as ours:
        for key, payload in enumerate(payloads):
            id2 = recordio.MAGIC if key % 3 == 0 else key  # a magic word in the header splits the record too
            mx_writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, 1.5, key, id2), payload))
            head = recordio.pack(recordio.IRHeader(0, 1.5, 0, id2), b"")
            # Framed from parts (the packer's way) and whole: the same bytes either way.
            framed = recordio.frame_record(head, payload) if key % 2 else recordio.frame_record(head + payload)
            ours.write_framed(key, framed)
        digests = ours.hexdigests()
    mx_writer.close()
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "mx.idx").read_bytes()
    assert digests == tuple(hashlib.sha256((tmp_path / f"ours.{e}").read_bytes()).hexdigest() for e in ("rec", "idx"))
    with pytest.raises(recordio.RecordIOError, match="cannot be set in place"), \
            recordio.RecordWriter(tmp_path / "x.rec") as writer:
        writer.write_framed(recordio.frame_record(recordio.pack(recordio.IRHeader(0, 0, 0, 0), b"")), recordio.MAGIC)


def test_framing_from_parts_is_framing_the_joined_record():
    records = _records()
    parts = [(a, b) for a in records for b in records[::7]] + [(b"abcd", recordio.MAGIC_BYTES, b"xy"), (b"abc", b"d")]
    for record in parts:
        assert recordio.frame_record(*record) == b"".join(bytes(c) for c in recordio.frame(b"".join(record)))


def test_framing_with_and_without_numpy_agree(monkeypatch):
    records = [*_records(), recordio.MAGIC_BYTES * 100 + b"tail", b"x" * 300 + recordio.MAGIC_BYTES + b"y" * 301]
    fast = [b"".join(bytes(c) for c in recordio.frame(r)) for r in records]
    monkeypatch.setattr(recordio, "_np", None)
    assert [b"".join(bytes(c) for c in recordio.frame(r)) for r in records] == fast
