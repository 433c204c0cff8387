"""Versioned datasets: the layout, manifests, latest, immutability, resume, errors — on both backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aidi.dataspace import Dataspace
from aidi.dataspace.datasets import CLAIM, MANIFEST, PENDING, local_fingerprint
from aidi.dataspace.files import dataset_files
from aidi.errors import IntegrityError, NotFoundError, UsageError
from tests.dataspace.conftest import make_tree, same_tree, write_rec


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "rec", {"vehicle/val.lst": b"0\t1\n", "README": b"packed\n"})
    write_rec(root / "vehicle" / "val.rec", [b"a" * 10, b"b" * 3, b"", b"c" * 100])
    return root


def test_upload_writes_the_layout_and_manifest(ds: Dataspace, folder: Path) -> None:
    result = ds.upload_dataset("adasmini", "trainset", folder)
    assert (result.version, result.files, result.transferred_files, result.skipped_files) == ("v1", 4, 4, 0)
    keys = [info.key for info in ds.store.list("datasets/")]
    assert keys == [f"datasets/adasmini/trainset/v1/{rel}" for rel in
                    ("README", CLAIM, MANIFEST, "vehicle/val.idx", "vehicle/val.lst", "vehicle/val.rec")]
    manifest = json.loads(ds.store.get_bytes("datasets/adasmini/trainset/v1/_manifest.json"))
    assert (manifest["name"], manifest["type"], manifest["version"], manifest["uploader"]) == \
        ("adasmini", "trainset", "v1", "tester")
    by_path = {f["path"]: f for f in manifest["files"]}
    rec = folder / "vehicle" / "val.rec"
    assert by_path["vehicle/val.rec"] == {"path": "vehicle/val.rec", "size": rec.stat().st_size,
                                          "sha256": hashlib.sha256(rec.read_bytes()).hexdigest(), "records": 4}
    assert "records" not in by_path["README"]
    assert manifest["total_size"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert manifest["created"].endswith("Z")
    assert ds.store.stat("datasets/adasmini/trainset/v1/" + PENDING) is None


def test_versions_are_immutable_and_latest_moves(ds: Dataspace, folder: Path, tmp_path: Path) -> None:
    assert ds.upload_dataset("adasmini", "trainset", folder).version == "v1"
    (folder / "README").write_bytes(b"changed\n")
    assert ds.upload_dataset("adasmini", "trainset", folder).version == "v2"
    assert ds.versions("adasmini", "trainset") == ["v1", "v2"]
    assert ds.resolve("adasmini", "trainset").version == "v2"
    ds.download_dataset("adasmini", "trainset", "v1", tmp_path / "v1")
    assert (tmp_path / "v1" / "README").read_bytes() == b"packed\n"
    ds.download_dataset("adasmini", "trainset", "latest", tmp_path / "latest")
    assert same_tree(folder, tmp_path / "latest")


def test_same_content_again_makes_no_new_version(ds: Dataspace, folder: Path) -> None:
    first = ds.upload_dataset("adasmini", "trainset", folder)
    again = ds.upload_dataset("adasmini", "trainset", folder)
    assert again.unchanged and again.version == first.version and again.transferred_files == 0
    assert ds.versions("adasmini", "trainset") == ["v1"]


def test_single_file_upload_uses_its_name(ds: Dataspace, folder: Path) -> None:
    result = ds.upload_dataset("single", "rec", folder / "vehicle" / "val.rec")
    assert [entry.path for entry in result.manifest.files] == ["val.rec"]
    assert result.manifest.records == 4


def test_pending_upload_is_invisible_then_resumes(ds: Dataspace, folder: Path, tmp_path: Path) -> None:
    # Stage what an interrupted upload leaves: the pending marker and some files, no manifest.
    pairs = dataset_files(folder)
    prefix = "datasets/adasmini/trainset/v1/"
    ds.store.put_bytes(prefix + PENDING, json.dumps({"upload_id": "x", "uploader": "tester", "started": "t",
                                                     "fingerprint": local_fingerprint(pairs)}).encode())
    for rel, file in pairs[:2]:
        ds.store.put_file(prefix + rel, file, metadata={"sha256": hashlib.sha256(file.read_bytes()).hexdigest()})
    # A third file is there with other content (the upload died before overwriting it, say): it is resent.
    ds.store.put_bytes(prefix + pairs[2][0], b"stale", metadata={"sha256": hashlib.sha256(b"stale").hexdigest()})

    assert ds.list_datasets() == []
    with pytest.raises(NotFoundError, match="no complete version yet"):
        ds.resolve("adasmini", "trainset")
    with pytest.raises(NotFoundError, match="unfinished upload"):
        ds.resolve("adasmini", "trainset", "v1")
    with pytest.raises(NotFoundError):
        ds.download_dataset("adasmini", "trainset", "latest", tmp_path / "out")
    assert [p["version"] for p in ds.pending_versions("adasmini", "trainset")] == ["v1"]

    result = ds.upload_dataset("adasmini", "trainset", folder)
    assert (result.version, result.skipped_files, result.transferred_files) == ("v1", 2, 2)
    assert ds.pending_versions("adasmini", "trainset") == []
    ds.download_dataset("adasmini", "trainset", "v1", tmp_path / "out")
    assert same_tree(folder, tmp_path / "out")


def test_other_content_does_not_resume_into_a_pending_version(ds: Dataspace, folder: Path) -> None:
    ds.store.put_bytes("datasets/adasmini/trainset/v1/" + PENDING, json.dumps({"fingerprint": "other"}).encode())
    assert ds.upload_dataset("adasmini", "trainset", folder).version == "v2"
    assert ds.versions("adasmini", "trainset") == ["v2"]


def test_delete_version_moves_latest_and_never_reuses_the_number(ds: Dataspace, folder: Path) -> None:
    ds.upload_dataset("adasmini", "trainset", folder)
    (folder / "README").write_bytes(b"v2\n")
    ds.upload_dataset("adasmini", "trainset", folder)
    assert ds.delete_version("adasmini", "trainset", "v2") == 5
    assert ds.resolve("adasmini", "trainset").version == "v1"
    with pytest.raises(NotFoundError, match="v2 was deleted by tester"):
        ds.resolve("adasmini", "trainset", "v2")
    assert ds.upload_dataset("adasmini", "trainset", folder).version == "v3"
    with pytest.raises(UsageError, match="name the version"):
        ds.delete_version("adasmini", "trainset", "latest")
    with pytest.raises(NotFoundError, match="no version v9"):
        ds.delete_version("adasmini", "trainset", "v9")


def test_unknown_names_say_what_exists(ds: Dataspace, folder: Path) -> None:
    ds.upload_dataset("adasmini", "trainset", folder)
    with pytest.raises(NotFoundError, match=r"no dataset named 'nope'.*hitc dataspace list"):
        ds.resolve("nope", "trainset")
    with pytest.raises(NotFoundError, match="has no type 'valset' \\(it has trainset\\)"):
        ds.resolve("adasmini", "valset")
    with pytest.raises(NotFoundError, match="no version v7 \\(its versions: v1\\)"):
        ds.resolve("adasmini", "trainset", "v7")
    with pytest.raises(UsageError, match="invalid version"):
        ds.resolve("adasmini", "trainset", "seven")
    with pytest.raises(UsageError, match="unknown dataset type"):
        ds.upload_dataset("adasmini", "models", folder)
    with pytest.raises(UsageError, match="invalid dataset name"):
        ds.upload_dataset("../x", "trainset", folder)
    with pytest.raises(NotFoundError, match="does not exist"):
        ds.upload_dataset("adasmini", "trainset", folder / "missing")


def test_list_datasets(ds: Dataspace, folder: Path) -> None:
    ds.upload_dataset("b", "valset", folder)
    ds.upload_dataset("a", "trainset", folder)
    ds.upload_dataset("a", "valset", folder / "README")
    summaries = ds.list_datasets()
    assert [(s.name, s.type, s.latest, s.latest_files) for s in summaries] == \
        [("a", "trainset", "v1", 4), ("a", "valset", "v1", 1), ("b", "valset", "v1", 4)]
    assert [s.type for s in ds.list_datasets("a")] == ["trainset", "valset"]


def test_download_refuses_a_corrupt_copy_and_resumes(ds: Dataspace, folder: Path, tmp_path: Path) -> None:
    ds.upload_dataset("adasmini", "trainset", folder)
    out = tmp_path / "out"
    first = ds.download_dataset("adasmini", "trainset", "v1", out)
    assert first.transferred_files == 4
    again = ds.download_dataset("adasmini", "trainset", "v1", out)
    assert (again.transferred_files, again.skipped_files) == (0, 4)
    (out / "README").write_bytes(b"local edit\n")
    assert ds.download_dataset("adasmini", "trainset", "v1", out).transferred_files == 1
    assert same_tree(folder, out)

    ds.store.put_bytes("datasets/adasmini/trainset/v1/README", b"tampered\n")
    with pytest.raises(IntegrityError, match=r"README.*sha256"):
        ds.download_dataset("adasmini", "trainset", "v1", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "README").exists()


def test_bind_ground_truth_to_a_dataset(ds: Dataspace, folder: Path, tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(NotFoundError, match="no dataset named 'adasmini' to bind gt to"):
        ds.bind_annotations("adasmini", "gt", gt)
    ds.upload_dataset("adasmini", "valset", folder)
    result = ds.bind_annotations("adasmini", "gt", gt)
    assert result.version == "v1"
    manifest = ds.resolve("adasmini", "gt")
    assert manifest.binds == {"dataset": "adasmini", "versions": {"valset": "v1"}}
    assert [entry.path for entry in manifest.files] == ["gt.json"]

    broken = tmp_path / "pr.json"
    broken.write_text('{"images": [')
    with pytest.raises(UsageError, match=r"pr\.json is not valid JSON"):
        ds.bind_annotations("adasmini", "pr", broken)
    with pytest.raises(UsageError, match="use gt"):
        ds.bind_annotations("adasmini", "trainset", gt)


def test_reserved_file_names_are_refused(ds: Dataspace, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", {"_manifest.json": b"{}"})
    with pytest.raises(UsageError, match="reserved"):
        ds.upload_dataset("x", "dataset", root)


def test_symlinked_files_are_followed_and_loops_are_not(ds: Dataspace, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", {"real/a.txt": b"a"})
    (root / "link.txt").symlink_to(root / "real" / "a.txt")
    (root / "real" / "loop").symlink_to(root)
    result = ds.upload_dataset("links", "dataset", root)
    assert [entry.path for entry in result.manifest.files] == ["link.txt", "real/a.txt"]


def test_versions_written_before_claims_read_the_same_and_keep_their_numbers(ds: Dataspace, folder: Path,
                                                                            tmp_path: Path) -> None:
    ds.upload_dataset("adasmini", "trainset", folder)
    ds.store.delete("datasets/adasmini/trainset/v1/" + CLAIM)  # what the layout before claims left
    assert ds.versions("adasmini", "trainset") == ["v1"]
    ds.download_dataset("adasmini", "trainset", "v1", tmp_path / "old")
    assert same_tree(folder, tmp_path / "old")
    (folder / "README").write_bytes(b"newer\n")
    assert ds.upload_dataset("adasmini", "trainset", folder).version == "v2"
    assert ds.resolve("adasmini", "trainset").version == "v2"
