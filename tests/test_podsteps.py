"""The pod-side steps `aidi fetch-data` and `aidi sync-output` against a SeaweedFS dataspace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from aidi.cli import aidi_main
from aidi.dataspace import DataspaceConfig, open_dataspace
from aidi.recordio import IndexedRecordWriter


def use_s3_dataspace(s3_server, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    """Point the pod-side environment (AIDI_DATASPACE_*) at a fresh bucket of the test S3 server."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    for key, value in {"ENDPOINT": s3_server.endpoint, "BUCKET": bucket, "ACCESS_KEY": s3_server.access_key,
                       "SECRET_KEY": s3_server.secret_key}.items():
        monkeypatch.setenv(f"AIDI_DATASPACE_{key}", value)
    config = DataspaceConfig.from_env()
    open_dataspace(config).store.check(create=True)
    return config


@pytest.fixture()
def dataspace_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    return use_s3_dataspace(s3_server, monkeypatch)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fetch_data_lays_out_versions_and_latest(tmp_path: Path, dataspace_env: DataspaceConfig,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ds = open_dataspace(dataspace_env)
    for version in (1, 2):
        src = tmp_path / f"rec{version}"
        (src / "vehicle").mkdir(parents=True)
        with IndexedRecordWriter(src / "vehicle" / "train.rec", src / "vehicle" / "train.idx") as writer:
            for key in range(version * 3):
                writer.write(key, bytes([version]) * 100)
        assert ds.upload_dataset("adasmini_4pe", "trainset", src).version == f"v{version}"
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "val.json").write_bytes(b"v" * 10)
    ds.upload_dataset("adasmini_4pe", "valset", tmp_path / "val")

    dest = tmp_path / "data_space" / "input"
    argv = ["fetch-data", "--dest", str(dest), "adasmini_4pe:trainset:latest", "adasmini_4pe:trainset:v1",
            "adasmini_4pe:valset:v1", "--json"]
    assert aidi_main.main(argv) == 0
    done = json.loads(capsys.readouterr().out)
    assert [(d["requested"], d["version"], d["files"]) for d in done] == [("latest", "v2", 2), ("v1", "v1", 2),
                                                                          ("v1", "v1", 1)]
    trainset = dest / "adasmini_4pe" / "trainset"
    assert _files(trainset / "v2") == _files(tmp_path / "rec2")
    assert _files(trainset / "v1") == _files(tmp_path / "rec1")
    assert _files(trainset / "latest") == _files(tmp_path / "rec2"), "the seed's .../latest/<file> path works"
    assert (trainset / "latest").is_symlink()
    assert _files(dest / "adasmini_4pe" / "valset" / "v1") == {"val.json": b"v" * 10}

    # A re-run (a restarted pod) keeps what is there and still succeeds.
    assert aidi_main.main(argv[:-1]) == 0
    assert "3 datasets ready" in capsys.readouterr().out


def test_fetch_data_errors_name_the_reference(tmp_path: Path, dataspace_env: DataspaceConfig,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert aidi_main.main(["fetch-data", "--dest", str(tmp_path), "adasmini_4pe:latest"]) == 2
    assert "'adasmini_4pe:latest' is not NAME:TYPE:VERSION" in capsys.readouterr().err
    assert aidi_main.main(["fetch-data", "--dest", str(tmp_path), "missing:trainset:latest"]) == 3
    assert "missing" in capsys.readouterr().err


def test_sync_output_makes_a_new_version(tmp_path: Path, dataspace_env: DataspaceConfig,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "output"
    out.mkdir()
    assert aidi_main.main(["sync-output", "--src", str(out), "--name", "models", "--type", "dataset"]) == 0
    assert "nothing synced" in capsys.readouterr().out
    (out / "int-inference-export-last-symbol.json").write_text("{}")
    (out / "logs").mkdir()
    (out / "logs" / "train.log").write_text("done\n")
    assert aidi_main.main(["sync-output", "--src", str(out), "--name", "models", "--type", "dataset"]) == 0
    assert "models:dataset:v1 (2 files)" in capsys.readouterr().out
    fetched = tmp_path / "check"
    open_dataspace(dataspace_env).download_dataset("models", "dataset", "latest", fetched)
    assert _files(fetched) == _files(out)
