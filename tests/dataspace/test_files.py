"""Record counts of .rec files, as the manifest reports them."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import pytest

from aidi.dataspace.files import count_records
from aidi.recordio import MAGIC_BYTES, RecordIOError
from tests.dataspace.conftest import write_rec


def test_counts_match_what_mxnet_reads(tmp_path: Path) -> None:
    # A record holding the magic word at an aligned offset is split into several frames: it counts once.
    records = [b"", b"x" * 5, MAGIC_BYTES * 3 + b"tail", b"y" * 70000]
    rec = tmp_path / "a.rec"
    write_rec(rec, records)
    reader = mx.recordio.MXRecordIO(str(rec), "r")
    read_back = []
    while (item := reader.read()) is not None:
        read_back.append(item)
    reader.close()
    assert read_back == records
    assert count_records(rec) == len(records)


def test_truncated_or_foreign_files_are_named(tmp_path: Path) -> None:
    rec = tmp_path / "a.rec"
    write_rec(rec, [b"z" * 100, b"w" * 100])
    rec.write_bytes(rec.read_bytes()[:-60])
    with pytest.raises(RecordIOError, match=r"a\.rec: the record at byte \d+ runs past the end"):
        count_records(rec)
    other = tmp_path / "b.rec"
    other.write_bytes(b"not a recordio file")
    with pytest.raises(RecordIOError, match=r"b\.rec: not RecordIO"):
        count_records(other)
    empty = tmp_path / "empty.rec"
    empty.write_bytes(b"")
    assert count_records(empty) == 0
