"""Uploads racing each other, killed at random points, and cut off by a server restart — always against the
real ``hitc`` in child processes, on both backends (the S3 one is the tests' SeaweedFS).

What must hold every time: each upload that says "done" owns a distinct complete version holding exactly
its files; no version mixes two uploads; every version ``list`` shows downloads byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aidi.dataspace import Dataspace, DataspaceConfig
from aidi.dataspace.registry import ModelRegistry
from tests.dataspace.conftest import make_tree, same_tree

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
