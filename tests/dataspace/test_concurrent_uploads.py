"""Uploads racing each other, killed at random points, and cut off by a server restart — always against the
real ``hitc`` in child processes, on both backends (the S3 one is the tests' SeaweedFS).

What must hold every time: each upload that says "done" owns a distinct complete version holding exactly
its files; no version mixes two uploads; every version ``list`` shows downloads byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aidi.dataspace import Dataspace, DataspaceConfig, open_dataspace
from aidi.dataspace.registry import ModelRegistry
from tests.dataspace.conftest import make_tree, same_tree
from tests.support.seaweedfs import SeaweedFS

REPO = Path(__file__).resolve().parents[2]
HITC = "import sys; from aidi.cli import hitc; sys.exit(hitc.main(sys.argv[1:]))"
UPLOADERS = 8


def hitc_process(config_file: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HITC, *argv, "-C", str(config_file)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def upload_args(data: Path) -> list[str]:
    return ["dataspace", "upload", "-n", "raceN", "-t", "trainset", "-f", str(data), "-j", "2", "-q", "--json"]


def racer_tree(root: Path, index: int) -> Path:
    """Same file names for every racer, different content (the issue's r1/ and r2/)."""
    return make_tree(root / f"r{index}", {f"f{i}.bin": f"racer {index} file {i}\n".encode() * (200 + 50 * i)
                                          for i in range(6)})


def assert_every_version_is_whole(ds: Dataspace, trees: list[Path], tmp_path: Path) -> dict[str, Path]:
    """Each listed version downloads byte for byte as exactly one of ``trees``; returns version → tree."""
    owners: dict[str, Path] = {}
    for version in ds.versions("raceN", "trainset"):
        dest = tmp_path / "back" / version
        ds.download_dataset("raceN", "trainset", version, dest)
        matches = [tree for tree in trees if same_tree(tree, dest)]
        assert len(matches) == 1, f"{version} holds no single upload's files: {sorted(p.name for p in dest.iterdir())}"
        owners[version] = matches[0]
    return owners


@pytest.fixture()
def config_file(ds_config: DataspaceConfig, tmp_path: Path) -> Path:
    return ds_config.save(tmp_path / "olympus.yaml")


def test_concurrent_uploaders_each_get_a_distinct_complete_version(ds: Dataspace, config_file: Path,
                                                                   tmp_path: Path) -> None:
    trees = [racer_tree(tmp_path / "src", i) for i in range(UPLOADERS)]
    children = [hitc_process(config_file, *upload_args(tree)) for tree in trees]
    outcomes = [(child.wait(timeout=120), *child.communicate()) for child in children]
    for code, _, err in outcomes:
        assert code == 0, err
    reported = {json.loads(out)["version"]: tree for (_, out, _), tree in zip(outcomes, trees, strict=True)}
    assert len(reported) == UPLOADERS, f"two uploads reported the same version: {sorted(reported)}"
    assert assert_every_version_is_whole(ds, trees, tmp_path) == reported
    assert ds.pending_versions("raceN", "trainset") == []


def test_concurrent_model_appends_each_get_a_distinct_complete_version(ds: Dataspace, config_file: Path,
                                                                      tmp_path: Path) -> None:
    specs, trees = [], []
    for index in range(UPLOADERS):
        trees.append(racer_tree(tmp_path / "models", index))
        specs.append(tmp_path / f"model_append_{index}.yaml")
        specs[-1].write_text(yaml.safe_dump({"REQUIRED": {"MODEL_NAME": "raceM", "MODEL_PATH": str(trees[-1])}}))
    children = [hitc_process(config_file, "model", "append", "-f", str(spec), "--json") for spec in specs]
    outcomes = [(child.wait(timeout=120), *child.communicate()) for child in children]
    for code, _, err in outcomes:
        assert code == 0, err
    reported = {json.loads(out)["version"]: tree for (_, out, _), tree in zip(outcomes, trees, strict=True)}
    assert len(reported) == UPLOADERS, f"two appends reported the same version: {sorted(reported)}"
    registry = ModelRegistry(ds.store)
    assert registry.versions("raceM") == sorted(reported, key=lambda v: int(v[1:]))
    for version, tree in reported.items():
        _, files = registry.download("raceM", version, tmp_path / "back" / version)
        assert same_tree(tree, tmp_path / "back" / version) and len(files) == 6


# `hitc` in a child process whose stores announce every object they store (the dataspace's own bookkeeping
# too) on stdout, so the parent can kill it at a chosen point of the upload rather than racing a fast one.
# With AIDI_TEST_HOLD_AFTER=N it waits for a line on stdin after the N-th object.
ANNOUNCING_HITC = """
import os, sys, threading
from aidi.cli import hitc
from aidi.dataspace.local import LocalStore
from aidi.dataspace.s3 import S3Store

hold_after = int(os.environ.get("AIDI_TEST_HOLD_AFTER", "0"))
stored = []
lock = threading.Lock()

def announcing(original):
    def put(self, key, *args, **kwargs):
        info = original(self, key, *args, **kwargs)
        with lock:
            stored.append(key)
            print("stored", key, flush=True)
            if len(stored) == hold_after:
                sys.stdin.readline()
        return info
    return put

for cls in (LocalStore, S3Store):
    cls.put_file = announcing(cls.put_file)
    cls.put_bytes = announcing(cls.put_bytes)
sys.exit(hitc.main(sys.argv[1:]))
"""
KILL_POINTS = 20
ROUND_FILES = 6


def announcing_upload(config_file: Path, data: Path, hold_after: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", ANNOUNCING_HITC, *upload_args(data), "-C", str(config_file)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                            "AIDI_TEST_HOLD_AFTER": str(hold_after)})


def read_stored(child: subprocess.Popen[str], count: int) -> int:
    """Wait until the child announced ``count`` stored objects (or ended); how many it announced."""
    assert child.stdout is not None
    seen = 0
    while seen < count and (line := child.stdout.readline()):
        seen += line.startswith("stored ")
    return seen


def test_an_upload_killed_at_random_points_always_completes_when_run_again(ds: Dataspace, config_file: Path,
                                                                            tmp_path: Path) -> None:
    rng = random.Random(20261204)
    trees: list[Path] = []
    interrupted = 0
    for round_ in range(KILL_POINTS):
        tree = make_tree(tmp_path / "src" / f"round{round_}",
                         {f"f{i}.bin": rng.randbytes(rng.randrange(1, 40_000)) for i in range(ROUND_FILES)})
        trees.append(tree)
        # The claim, the files and the manifest: kill after any of them (0: before the first).
        kill_after = rng.randrange(ROUND_FILES + 3)
        child = announcing_upload(config_file, tree)
        try:
            read_stored(child, kill_after)
            child.kill()
        finally:
            child.wait(timeout=30)
            child.stdout.close(), child.stderr.close(), child.stdin.close()  # type: ignore[union-attr]
        interrupted += bool(ds.pending_versions("raceN", "trainset"))
        assert [s.versions for s in ds.list_datasets("raceN")] in ([], [tuple(f"v{n + 1}" for n in range(round_))],
                                                                   [tuple(f"v{n + 1}" for n in range(round_ + 1))])

        result = ds.upload_dataset("raceN", "trainset", tree)
        assert result.version == f"v{round_ + 1}"
        assert ds.pending_versions("raceN", "trainset") == []
    owners = assert_every_version_is_whole(ds, trees, tmp_path)
    assert owners == {f"v{n + 1}": tree for n, tree in enumerate(trees)}
    assert interrupted >= 5, f"only {interrupted} of {KILL_POINTS} kills left an unfinished upload behind"


def test_an_upload_cut_off_by_a_server_restart_fails_clearly_and_resumes(tmp_path: Path) -> None:
    with SeaweedFS(tmp_path / "s3") as server:
        config = DataspaceConfig(endpoint=server.endpoint, bucket="restart", access_key=server.access_key,
                                 secret_key=server.secret_key)
        ds = open_dataspace(config, jobs=2, uploader="tester")
        ds.store.check(create=True)
        config_file = config.save(tmp_path / "olympus.yaml")
        tree = racer_tree(tmp_path / "src", 0)
        child = announcing_upload(config_file, tree, hold_after=3)  # the claim and two files
        try:
            assert read_stored(child, 3) == 3
            server.stop()
            _, err = child.communicate("go on\n", timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert child.returncode == 5, err
        assert err.count("\n") == 1 and "cannot reach the dataspace" in err
        assert "raceN/trainset v1 was not committed: run the same upload again" in err
        server.start()  # the same folder and port
        assert ds.pending_versions("raceN", "trainset")[0]["version"] == "v1"
        assert ds.list_datasets() == []
        result = ds.upload_dataset("raceN", "trainset", tree)
        assert (result.version, result.skipped_files >= 2) == ("v1", True)
        ds.download_dataset("raceN", "trainset", "v1", tmp_path / "back")
        assert same_tree(tree, tmp_path / "back")
        ds.close()
