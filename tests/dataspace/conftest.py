"""Fixtures of the dataspace tests: every test runs against both backends, each time in a fresh bucket
(S3: the session's SeaweedFS) or a fresh folder (local)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidi.dataspace import Dataspace, DataspaceConfig, open_dataspace
from aidi.recordio import IndexedRecordWriter


@pytest.fixture(params=["s3", "local"])
def ds_config(request: pytest.FixtureRequest, tmp_path: Path) -> DataspaceConfig:
    if request.param == "local":
        return DataspaceConfig.local(tmp_path / "dataspace")
    s3 = request.getfixturevalue("s3_server")
    config = DataspaceConfig(endpoint=s3.endpoint, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key=s3.access_key,
                             secret_key=s3.secret_key)
    open_dataspace(config).store.check(create=True)
    return config


@pytest.fixture()
def ds(ds_config: DataspaceConfig) -> Iterator[Dataspace]:
    dataspace = open_dataspace(ds_config, jobs=4, uploader="tester")
    yield dataspace
    dataspace.close()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def write_rec(rec: Path, records: list[bytes]) -> None:
    rec.parent.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(rec, rec.with_suffix(".idx")) as writer:
        for key, record in enumerate(records):
            writer.write(key, record)


def same_tree(left: Path, right: Path) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return files(left) == files(right)
