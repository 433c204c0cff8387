"""The ObjectStore interface: both backends behave the same."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aidi.dataspace import Dataspace
from aidi.dataspace.store import ObjectExists
from aidi.errors import IntegrityError, NotFoundError


def test_bytes_round_trip_with_metadata(ds: Dataspace) -> None:
    store = ds.store
    assert store.stat("a/b.txt") is None
    store.put_bytes("a/b.txt", b"hello", metadata={"sha256": "abc"})
    info = store.stat("a/b.txt")
    assert info is not None and info.size == 5 and info.sha256 == "abc"
    assert store.get_bytes("a/b.txt") == b"hello"
    store.put_bytes("a/b.txt", b"bye")  # overwrite drops the old metadata
    info = store.stat("a/b.txt")
    assert info is not None and info.size == 3 and info.sha256 is None


def test_file_round_trip_checks_sha256(ds: Dataspace, tmp_path: Path) -> None:
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    data = bytes(range(256)) * 4000
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    seen: list[int] = []
    ds.store.put_file("blobs/x.bin", src, metadata={"sha256": hashlib.sha256(data).hexdigest()}, progress=seen.append)
    assert sum(seen) == len(data)
    dest = tmp_path / "out" / "x.bin"
    ds.store.get_file("blobs/x.bin", dest, sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    with pytest.raises(IntegrityError, match="sha256"):
        ds.store.get_file("blobs/x.bin", tmp_path / "bad.bin", sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"src.bin", "out"}  # no temporary file left behind
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.bin"]


def test_missing_objects(ds: Dataspace, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        ds.store.get_bytes("no/such")
    with pytest.raises(NotFoundError):
        ds.store.get_file("no/such", tmp_path / "x")
    ds.store.delete("no/such")  # not an error


def test_list_recursive_and_by_level(ds: Dataspace) -> None:
    for key in ("d/x/1", "d/x/2", "d/y/3", "d/top", "e/other"):
        ds.store.put_bytes(key, key.encode())
    assert [i.key for i in ds.store.list("d/")] == ["d/top", "d/x/1", "d/x/2", "d/y/3"]
    level = list(ds.store.list("d/", recursive=False))
    assert [(i.key, i.is_dir) for i in level] == [("d/top", False), ("d/x/", True), ("d/y/", True)]
    assert [i.key for i in ds.store.list("d/x")] == ["d/x/1", "d/x/2"]
    assert ds.store.delete_prefix("d/x/") == 2
    assert [i.key for i in ds.store.list("d/")] == ["d/top", "d/y/3"]
    assert list(ds.store.list("nothing/")) == []


def test_uri_names_the_backend(ds: Dataspace, ds_config) -> None:
    uri = ds.store.uri("datasets/a/b")
    if ds_config.is_local:
        assert uri == f"{ds_config.endpoint}/datasets/a/b"
    else:
        assert uri == f"s3://{ds_config.bucket}/datasets/a/b"


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", ""])
def test_keys_that_could_escape_are_refused(ds: Dataspace, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        ds.store.put_bytes(key, b"x")


def test_local_store_clears_temporary_files_of_killed_writes(tmp_path: Path) -> None:
    import os
    import time

    from aidi.dataspace.local import STALE_TEMP_SECONDS, LocalStore

    store = LocalStore(tmp_path / "ds")
    store.put_bytes("a", b"x")
    stale, fresh = tmp_path / "ds" / ".tmp" / "put-old", tmp_path / "ds" / ".tmp" / "put-new"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    assert store.abort_uploads("datasets/") == 1
    assert not stale.exists() and fresh.exists()
    assert [info.key for info in store.list()] == ["a"]  # temporary files were never listed


def test_create_only_writes_never_replace(ds: Dataspace, tmp_path: Path) -> None:
    store = ds.store
    store.put_bytes("c/claim.json", b"first", metadata={"sha256": "1"}, create_only=True)
    with pytest.raises(ObjectExists):
        store.put_bytes("c/claim.json", b"second", metadata={"sha256": "2"}, create_only=True)
    (tmp_path / "f.bin").write_bytes(b"third")
    with pytest.raises(ObjectExists):
        store.put_file("c/claim.json", tmp_path / "f.bin", create_only=True)
    assert store.get_bytes("c/claim.json") == b"first" and store.stat("c/claim.json").sha256 == "1"
    store.delete("c/claim.json")
    store.put_file("c/claim.json", tmp_path / "f.bin", create_only=True)  # a removed key can be created again
    assert store.get_bytes("c/claim.json") == b"third"


def test_of_racing_create_only_writers_exactly_one_wins(ds: Dataspace) -> None:
    barrier = threading.Barrier(8)

    def create(index: int) -> bool:
        barrier.wait()
        try:
            ds.store.put_bytes("race/key", f"writer {index}".encode(), create_only=True)
            return True
        except ObjectExists:
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(create, range(8)))
    assert won.count(True) == 1
    assert ds.store.get_bytes("race/key") == f"writer {won.index(True)}".encode()


def test_downloaded_files_are_readable_by_other_users_as_the_umask_allows(ds: Dataspace, tmp_path: Path) -> None:
    # A pod's fetch step and its trainer run as different users and share the files through an emptyDir
    # (tests/test_containers_e2e.py found mkstemp's 0600 there).
    ds.store.put_bytes("perm/x.bin", b"data")
    old = os.umask(0o022)
    try:
        ds.store.get_file("perm/x.bin", tmp_path / "x.bin")
        os.umask(0o077)
        ds.store.get_file("perm/x.bin", tmp_path / "private.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
