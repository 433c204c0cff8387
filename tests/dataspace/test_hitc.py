"""`hitc` parsed from real argument lists, against both backends: what reached the dataspace and what the
user sees (one line per error, exit codes, summaries, --json)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aidi.cli import hitc
from aidi.dataspace import DataspaceConfig, open_dataspace
from tests.dataspace.conftest import make_tree, same_tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("ENDPOINT", "BUCKET", "ACCESS_KEY", "SECRET_KEY"):
        monkeypatch.delenv(f"AIDI_DATASPACE_{name}", raising=False)


@pytest.fixture()
def config_file(ds_config: DataspaceConfig, tmp_path: Path) -> Path:
    return ds_config.save(tmp_path / "olympus.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = hitc.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_a_private_config_and_checks_the_server(s3_server, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "init", "-t", s3_server.token, "--endpoint", s3_server.endpoint,
                       "--bucket", "hitc-init", "--create-bucket")
    assert code == 0 and "connection checked" in out and s3_server.secret_key not in out
    written = tmp_path / "home" / ".olympus" / "config.yaml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert yaml.safe_load(written.read_text())["dataspace"] == {
        "endpoint": s3_server.endpoint, "bucket": "hitc-init", "token": s3_server.token}
    loaded = DataspaceConfig.load()
    assert (loaded.access_key, loaded.secret_key, loaded.bucket) == (s3_server.access_key, s3_server.secret_key,
                                                                     "hitc-init")


def test_init_refuses_a_wrong_token_in_one_line(s3_server, tmp_path: Path, capsys) -> None:
    secret = "not-the-secret-4711"
    code, _, err = run(capsys, "init", "-t", f"{s3_server.access_key}:{secret}", "--endpoint", s3_server.endpoint,
                       "-C", str(tmp_path / "c.yaml"))
    assert code == 4
    assert err.count("\n") == 1 and "refused the credentials" in err and "hitc init" in err
    assert secret not in err
    assert not (tmp_path / "c.yaml").exists()


def test_init_errors_for_bad_token_unreachable_server_and_missing_bucket(s3_server, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "init", "-t", "no-colon", "--endpoint", s3_server.endpoint)
    assert code == 2 and "ACCESS_KEY:SECRET_KEY" in err
    code, _, err = run(capsys, "init", "-t", "a:b", "--endpoint", "http://127.0.0.1:9")
    assert code == 5 and "cannot reach" in err and err.count("\n") == 1
    code, _, err = run(capsys, "init", "-t", s3_server.token, "--endpoint", s3_server.endpoint, "--bucket", "absent")
    assert code == 3 and "--create-bucket" in err


def test_upload_list_show_download_rm(config_file: Path, tmp_path: Path, capsys) -> None:
    data = make_tree(tmp_path / "rec", {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 100})
    code, out, _ = run(capsys, "dataspace", "upload", "-n", "adas", "-t", "trainset", "-f", str(data), "-C",
                       str(config_file))
    assert code == 0
    assert out.startswith("adas/trainset v1: uploaded 2 files / 0.0 MB, 0 already present")
    code, out, _ = run(capsys, "dataspace", "upload", "-n", "adas", "-t", "trainset", "-f", str(data), "-C",
                       str(config_file))
    assert code == 0 and "already holds these 2 files" in out

    code, out, _ = run(capsys, "dataspace", "list", "--json", "-C", str(config_file))
    assert code == 0
    assert [(d["name"], d["type"], d["latest"], d["latest_files"]) for d in json.loads(out)] == \
        [("adas", "trainset", "v1", 2)]
    code, out, _ = run(capsys, "dataspace", "show", "adas", "-t", "trainset", "--version", "latest", "--json",
                       "-C", str(config_file))
    assert [f["path"] for f in json.loads(out)["files"]] == ["a.txt", "sub/b.bin"]
    code, out, _ = run(capsys, "dataspace", "show", "adas", "-C", str(config_file))
    assert "adas/trainset (latest: v1)" in out and "\n  v1 " in out

    code, out, _ = run(capsys, "dataspace", "download", "adas", "-t", "trainset", "-o", str(tmp_path / "dl"),
                       "--json", "-C", str(config_file))
    assert code == 0 and json.loads(out)["transferred_files"] == 2
    assert same_tree(data, tmp_path / "dl")

    code, out, err = run(capsys, "dataspace", "rm", "adas", "-t", "trainset", "--version", "v1", "-C",
                         str(config_file))
    assert code == 2 and "pass -y" in err  # no terminal to ask on
    code, out, _ = run(capsys, "dataspace", "rm", "adas", "-t", "trainset", "--version", "v1", "-y", "-C",
                       str(config_file))
    assert code == 0 and out.startswith("deleted adas/trainset v1 (2 files")
    code, _, err = run(capsys, "dataspace", "download", "adas", "-t", "trainset", "-o", str(tmp_path / "x"), "-C",
                       str(config_file))
    assert code == 3 and "no complete version" in err and err.count("\n") == 1


def test_unknown_dataset_and_version_exit_3(config_file: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "dataspace", "show", "ghost", "-C", str(config_file))
    assert code == 3 and "no dataset named 'ghost'" in err
    make_tree(tmp_path / "d", {"x": b"x"})
    run(capsys, "dataspace", "upload", "-n", "real", "-t", "valset", "-f", str(tmp_path / "d"), "-C", str(config_file))
    code, _, err = run(capsys, "dataspace", "download", "real", "-t", "valset", "--version", "v4", "-o",
                       str(tmp_path / "o"), "-C", str(config_file))
    assert code == 3 and "no version v4 (its versions: v1)" in err


def test_bind_gt_with_dash_d(config_file: Path, tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "imgs", {"0.jpg": b"\xff\xd8"})
    gt = make_tree(tmp_path / "gt", {"gt.json": b'{"annotations": []}'}) / "gt.json"
    code, _, err = run(capsys, "dataspace", "upload", "-d", "imgs", "-t", "gt", "-f", str(gt), "-C", str(config_file))
    assert code == 3 and "upload its images first" in err
    run(capsys, "dataspace", "upload", "-n", "imgs", "-t", "valset", "-f", str(tmp_path / "imgs"), "-C",
        str(config_file))
    code, out, _ = run(capsys, "dataspace", "upload", "-d", "imgs", "-t", "gt", "-f", str(gt), "--json", "-C",
                       str(config_file))
    assert code == 0 and json.loads(out)["version"] == "v1"
    manifest = open_dataspace(DataspaceConfig.load(config_file)).resolve("imgs", "gt")
    assert manifest.binds == {"dataset": "imgs", "versions": {"valset": "v1"}}


def test_the_secret_stays_out_of_verbose_logs_and_tracebacks(s3_server, tmp_path: Path) -> None:
    bucket = DataspaceConfig(s3_server.endpoint, "hitc-verbose", s3_server.access_key, s3_server.secret_key)
    open_dataspace(bucket).store.check(create=True)
    make_tree(tmp_path / "d", {"x.txt": b"x"})
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    good = bucket.save(tmp_path / "good.yaml")
    ok = subprocess.run([sys.executable, "-m", "aidi.cli.hitc", "dataspace", "upload", "-v", "-n", "d", "-t",
                         "dataset", "-f", str(tmp_path / "d"), "-C", str(good)],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert ok.returncode == 0 and "DEBUG" in ok.stderr  # urllib3's request logs are there...
    assert s3_server.secret_key not in ok.stdout + ok.stderr  # ...without the key
    wrong_secret = "wrong-secret-" + "9" * 20
    bad = DataspaceConfig(s3_server.endpoint, "hitc-verbose", s3_server.access_key, wrong_secret)
    failed = subprocess.run([sys.executable, "-m", "aidi.cli.hitc", "dataspace", "list", "-v", "-C",
                             str(bad.save(tmp_path / "bad.yaml"))],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert failed.returncode == 4 and "Traceback" in failed.stderr
    assert wrong_secret not in failed.stdout + failed.stderr


def test_init_replaces_a_broken_config(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "c.yaml"
    broken.write_text("dataspace: [unclosed")
    code, _, err = run(capsys, "dataspace", "list", "-C", str(broken))
    assert code == 2 and "not valid YAML" in err and "hitc init" in err
    code, _, _ = run(capsys, "init", "--endpoint", f"file://{tmp_path / 'ds'}", "-C", str(broken))
    assert code == 0 and DataspaceConfig.load(broken).is_local


def test_token_from_stdin_keeps_it_off_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("AK:SK-from-stdin\n"))
    code, out, _ = run(capsys, "init", "-t", "-", "--endpoint", "http://127.0.0.1:9", "--no-check",
                       "-C", str(tmp_path / "c.yaml"))
    assert code == 0 and "SK-from-stdin" not in out
    assert DataspaceConfig.load(tmp_path / "c.yaml").secret_key == "SK-from-stdin"


def test_missing_config_file_and_bad_endpoint(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "dataspace", "list", "-C", str(tmp_path / "nope.yaml"))
    assert code == 2 and "hitc init" in err
    code, _, err = run(capsys, "init", "--endpoint", "minio:9000", "-t", "a:b", "--no-check")
    assert code == 2 and "http(s)://HOST[:PORT]" in err


def test_help_is_complete() -> None:
    parser = hitc.build_parser()
    text = parser.format_help()
    assert "init" in text and "dataspace" in text
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["dataspace", "upload", "-t", "trainset", "-f", "x"])
    assert exit_info.value.code == 2  # one of -n / -d is required


def test_progress_lines_count_files_and_bytes(ds, tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    printer = hitc.TransferPrinter("upload", stream=stream)
    printer.interval = 0  # a log gets a line every 5 s; here, every update
    data = make_tree(tmp_path / "d", {f"f{i}": bytes(1024 * 1024) for i in range(3)})
    ds.upload_dataset("p", "dataset", data, jobs=1, progress=printer.update)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("uploading: 0/3 files, 0.0/3.0 MB")
    assert any(line.startswith("committing: 3/3 files, 3.0/3.0 MB") for line in lines)
