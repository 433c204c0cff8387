"""`hitc dataspace rm` racing an upload of the same version (issue 17): the upload either completes as a full
version or fails with a line saying the version was deleted; never a version with files missing. Each
interleaving is forced by running the delete, from a second client, at that point of the upload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aidi.dataspace import Dataspace, DataspaceConfig, open_dataspace
from aidi.errors import IntegrityError, NotFoundError
from tests.dataspace.conftest import make_tree, same_tree

FILES = {f"scene/part-{i}.bin": bytes([i]) * (1000 + i) for i in range(6)}


def _delete_when(ds: Dataspace, monkeypatch: pytest.MonkeyPatch, config: DataspaceConfig,
                 when: Callable[[str], bool]) -> list[int]:
    """Have a second client delete v1 right after the upload's write of the first key ``when`` accepts."""
    other = open_dataspace(config, uploader="deleter")
    removed: list[int] = []

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(key: str, *args: Any, **kwargs: Any) -> Any:
            result = method(key, *args, **kwargs)
            if not removed and when(key):
                removed.append(other.delete_version("race", "trainset", "v1"))
            return result
        return call

    monkeypatch.setattr(ds.store, "put_file", wrap(ds.store.put_file))
    monkeypatch.setattr(ds.store, "put_bytes", wrap(ds.store.put_bytes))
    return removed


def _nothing_half_visible(ds: Dataspace, tmp_path: Path) -> None:
    assert ds.versions("race", "trainset") == []
    with pytest.raises(NotFoundError):
        ds.resolve("race", "trainset", "v1")
    left = {info.key.rsplit("/", 1)[-1] for info in ds.store.list("datasets/race/trainset/v1/")}
    assert left == {"_claim.json", "_deleted.json"}  # the number stays taken; no file, no manifest
    # The next upload is a new, complete version.
    result = ds.upload_dataset("race", "trainset", tmp_path / "src")
    assert result.version == "v2" and ds.versions("race", "trainset") == ["v2"]
    ds.download_dataset("race", "trainset", "latest", tmp_path / "got")
    assert same_tree(tmp_path / "src", tmp_path / "got")


@pytest.mark.parametrize("point", ["a file written", "the manifest created"])
def test_a_delete_during_the_upload_fails_it_clearly_and_leaves_nothing(
        ds: Dataspace, ds_config: DataspaceConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        point: str) -> None:
    make_tree(tmp_path / "src", FILES)
    if point == "a file written":
        removed = _delete_when(ds, monkeypatch, ds_config, lambda key: key.endswith(".bin"))
    else:
        removed = _delete_when(ds, monkeypatch, ds_config, lambda key: key.endswith("_manifest.json"))
    with pytest.raises(IntegrityError, match=r"race/trainset v1 was deleted \(by deleter, `hitc dataspace rm`\) "
                                             r"while this upload was writing it; nothing of this upload was kept"):
        ds.upload_dataset("race", "trainset", tmp_path / "src", jobs=1)
    assert removed and removed[0] >= 1
    monkeypatch.undo()
    _nothing_half_visible(ds, tmp_path)


def test_a_delete_after_the_commit_is_an_ordinary_delete(ds: Dataspace, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    assert ds.upload_dataset("race", "trainset", tmp_path / "src").version == "v1"
    assert ds.delete_version("race", "trainset", "v1") == len(FILES) + 1
    _nothing_half_visible(ds, tmp_path)
