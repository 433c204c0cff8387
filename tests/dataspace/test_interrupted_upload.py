"""An upload killed part-way (SIGKILL, and Ctrl-C) leaves no visible version; running it again resumes and
the result is byte for byte what was uploaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aidi.dataspace import Dataspace, DataspaceConfig
from aidi.errors import NotFoundError
from tests.dataspace.conftest import make_tree, same_tree
from tests.support.processes import ctrl_c_reaches_python

REPO = Path(__file__).resolve().parents[2]
FILES = 12
STOP_AFTER = 5

# Runs `hitc` in a child process whose stores announce every stored object and then, after STOP_AFTER
# objects, stall — so the parent can kill it at a known point rather than racing a fast upload.
CHILD = f"""
import sys, threading, time
from aidi.cli import hitc
from aidi.dataspace.local import LocalStore
from aidi.dataspace.s3 import S3Store

stored = []
lock = threading.Lock()

def announcing(original):
    def put(self, key, *args, **kwargs):
        info = original(self, key, *args, **kwargs)
        if key.rsplit("/", 1)[-1].startswith("_"):  # the dataspace's own bookkeeping
            return info
        with lock:
            stored.append(key)
            print("stored", key, flush=True)
            stall = len(stored) >= {STOP_AFTER}
        if stall:
            time.sleep(600)
        return info
    return put

for cls in (LocalStore, S3Store):
    cls.put_file = announcing(cls.put_file)
    cls.put_bytes = announcing(cls.put_bytes)
sys.exit(hitc.main(sys.argv[1:]))
"""


def start_upload(config_file: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, "dataspace", "upload", "-n", "adas", "-t", "trainset", "-f", str(data),
         "-j", "2", "-C", str(config_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=ctrl_c_reaches_python,
    )


def wait_for_stored(child: subprocess.Popen[str], count: int) -> list[str]:
    keys = []
    assert child.stdout is not None
    while len(keys) < count:
        line = child.stdout.readline()
        assert line, f"the upload ended early: {child.wait()} {child.stderr.read() if child.stderr else ''}"
        if line.startswith("stored "):
            keys.append(line.split(" ", 1)[1].strip())
    return keys


def assert_nothing_visible(ds: Dataspace, dest: Path) -> None:
    assert ds.list_datasets() == []
    with pytest.raises(NotFoundError):
        ds.resolve("adas", "trainset", "latest")
    with pytest.raises(NotFoundError):
        ds.download_dataset("adas", "trainset", "latest", dest)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data", {f"part-{i:02d}.bin": os.urandom(64 * 1024 + i) for i in range(FILES)})


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_killed_upload_is_invisible_and_resumes(ds: Dataspace, ds_config: DataspaceConfig, data: Path,
                                                tmp_path: Path, how: signal.Signals) -> None:
    config_file = ds_config.save(tmp_path / "config.yaml")
    child = start_upload(config_file, data)
    try:
        stored = wait_for_stored(child, STOP_AFTER)
        child.send_signal(how)
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.stderr is not None
    err = child.stderr.read()
    if how == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130 and "run the same command again to resume" in err.lower()
    assert all(ds.store.exists(key) for key in stored)  # the parts that made it are really there
    assert_nothing_visible(ds, tmp_path / "early")

    result = ds.upload_dataset("adas", "trainset", data)
    assert result.version == "v1"
    assert result.skipped_files >= STOP_AFTER and result.transferred_files == FILES - result.skipped_files
    assert ds.pending_versions("adas", "trainset") == []
    ds.download_dataset("adas", "trainset", "latest", tmp_path / "back")
    assert same_tree(data, tmp_path / "back")
