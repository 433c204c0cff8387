"""Hostile and malformed job files through `traincli validate`: each one a clear error (exit 2, never the
internal-error 70), naming the field and the fix, quoting at most a short excerpt of what was given — and
fast, however the file was built to be slow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidi.api import loader
from aidi.cli import traincli
from tests.conftest import REPO

GOOD_TEXT = (REPO / "examples" / "train_job.yaml").read_text()
GOOD = yaml.safe_load(GOOD_TEXT)
GOOD_CR = yaml.safe_load((REPO / "examples" / "trainjob.yaml").read_text())


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = traincli.main(["validate", "-f", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


def alias_bomb(levels: int, width: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"REQUIRED: {{JOB_NAME: *a{levels}}}")
    return "\n".join(lines) + "\n"


def aidi(required: dict[str, Any] | None = None, optional: dict[str, Any] | None = None) -> str:
    doc = {"REQUIRED": {**GOOD["REQUIRED"], **(required or {})}, "OPTIONAL": {**GOOD["OPTIONAL"], **(optional or {})}}
    return yaml.safe_dump(doc)


def cr(**spec: Any) -> str:
    doc = {**GOOD_CR, "spec": {**GOOD_CR["spec"], **spec}}
    name = spec.pop("_name", None)
    if name is not None:
        doc["metadata"] = {**GOOD_CR["metadata"], "name": name}
        doc["spec"].pop("_name")
    return yaml.safe_dump(doc)


# (id, file content (str or bytes), words the error must hold)
CASES: list[tuple[str, str | bytes, str]] = [
    ("alias-bomb-9-levels", alias_bomb(9, 9), "more than 64 YAML aliases"),
    ("alias-bomb-few-aliases", alias_bomb(12, 5), "expands to more than 100000 values"),
    ("deep-list", "REQUIRED: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels"),
    ("deep-map", "REQUIRED:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)), "nested more than"),
    ("random-bytes", os.urandom(2048) + b"\xff", "not UTF-8 text"),
    ("latin-1", GOOD_TEXT.replace("adasmini-4pe", "adasmini-4p\u00e9").encode("latin-1"), "not UTF-8 text"),
    ("nul-and-control-characters", "REQUIRED:\n  JOB_NAME: a\x00b\n", "YAML syntax error"),
    ("over-size-cap", GOOD_TEXT + "#" + "x" * (1 << 20) + "\n", "over the 1 MiB limit"),
    ("int-of-5000-digits", "REQUIRED:\n  GPU_PER_WORKER: " + "9" * 5000 + "\n", "a value cannot be read"),
    ("python-tag", "REQUIRED: !!python/object:os.system {}\n", "could not determine a constructor"),
    ("unhashable-key", "REQUIRED:\n  ? [a, b]\n  : 1\n", "found unhashable key"),
    ("top-level-list", "- a\n- b\n", "expected a mapping at the top level"),
    ("two-documents", GOOD_TEXT + "---\n" + GOOD_TEXT, "2 YAML documents"),
    ("duplicate-password", GOOD_TEXT.replace("  JOB_PASSWD:", '  JOB_PASSWD: "first"\n  JOB_PASSWD:', 1),
     "duplicate key 'JOB_PASSWD' (first at line"),
    ("empty-password", aidi({"JOB_PASSWD": ""}), "REQUIRED.JOB_PASSWD: the password is empty"),
    ("gpu-true", aidi({"GPU_PER_WORKER": True}), "REQUIRED.GPU_PER_WORKER: expected a whole number, got the boolean"),
    ("workers-yes", aidi({"WORKER_MAX_NUM": "yes"}), "REQUIRED.WORKER_MAX_NUM"),
    ("wall-time-1e21", aidi(optional={"WALL_TIME": 10**21}), "OPTIONAL.WALL_TIME: 1000000000000000000000 is out of"),
    ("image-upper-case", aidi(optional={"DOCKER_IMAGE": "UPPER CASE image!!"}),
     "OPTIONAL.DOCKER_IMAGE: 'UPPER CASE image!!' is not allowed here; an image reference such as"),
    ("name-starts-with-digit", aidi({"JOB_NAME": "1job", "WORKER_MAX_NUM": 2}), 'use JOB_NAME: "job-1job"'),
    ("name-too-long", aidi({"JOB_NAME": "a" * 53}), "at most 52 characters"),
    ("project-not-a-label", aidi({"PROJECT_ID": "PDT 2021/005"}), "REQUIRED.PROJECT_ID"),
    ("cr-name-digit", cr(_name="1job", workers={"min": 1, "max": 2}), "metadata.name"),
    ("cr-53-chars-200-workers", cr(_name="a" * 53, workers={"min": 1, "max": 200}), "metadata.name"),
    ("cr-node-selector-key", cr(nodeSelector={"bad key!": "x"}), "spec.nodeSelector"),
    ("cr-node-selector-value", cr(nodeSelector={"gpu": "a" * 64}), "spec.nodeSelector.gpu"),
    ("cr-queue-name", cr(queueName="team a queue"), "spec.queueName"),
    ("cr-gpus-bool", cr(gpusPerWorker=True), "spec.gpusPerWorker: expected a whole number, got the boolean"),
    ("cr-deadline-int64", cr(activeDeadlineSeconds=2**63), "spec.activeDeadlineSeconds"),
    ("cr-image", cr(image="Not An Image"), "spec.image"),
    ("cr-quantity", cr(resources={"requests": {"memory": "lots"}}), "spec.resources.requests.memory"),
    ("cr-toleration-exists-value", cr(tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]),
     "operator Exists takes no value"),
    ("cr-secret-name", cr(imagePullSecrets=[{"name": "Bad_Name"}]), "spec.imagePullSecrets[0].name"),
]


@pytest.mark.parametrize(("content", "words"), [(c, w) for _, c, w in CASES], ids=[i for i, _, _ in CASES])
def test_hostile_job_file_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             content: str | bytes, words: str) -> None:
    path = tmp_path / "job.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    code, output = validate(path, capsys)
    assert code == 2, output
    assert words in output, output
    assert "internal error" not in output
    assert len(output) < 4000, f"an error must quote excerpts, not the input ({len(output)} characters)"


def test_the_password_never_appears_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(aidi({"JOB_PASSWD": ["hunter2-secret"], "GPU_PER_WORKER": "x"}))
    code, output = validate(path, capsys)
    assert code == 2 and "REQUIRED.JOB_PASSWD" in output
    assert "hunter2" not in output


def test_long_values_are_quoted_as_an_excerpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(aidi(optional={"DOCKER_IMAGE": "X" * 100_000}))
    code, output = validate(path, capsys)
    assert code == 2 and "… (100002 characters)" in output and len(output) < 2000


def test_many_errors_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(cr())
    doc["spec"]["env"] = [{"name": f"{i}bad", "value": "v"} for i in range(200)]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, output = validate(path, capsys)
    assert code == 2 and "and 170 more; fix these first" in output


def test_anchors_within_bounds_still_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job file may use an anchor or two (and YAML merge keys) the ordinary way."""
    text = GOOD_TEXT + "x-common: &ds {DATA_TYPE: trainset}\n"
    doc = yaml.safe_load(GOOD_TEXT)
    assert "OPTIONAL" in doc
    path = tmp_path / "job.yaml"
    path.write_text(text.replace("x-common: &ds {DATA_TYPE: trainset}\n", ""))
    assert validate(path, capsys)[0] == 0
    merged = "base: &base {a: 1}\nother:\n  <<: *base\n  b: 2\n"
    assert loader.read_yaml(merged, "t") == {"base": {"a": 1}, "other": {"a": 1, "b": 2}}


def test_a_valid_file_at_the_size_cap_is_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Just under 1 MiB of comments: accepted (the cap is on size, not on content)."""
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_TEXT + ("# padding\n" * ((loader.MAX_FILE_BYTES - len(GOOD_TEXT)) // 10 - 1)))
    assert path.stat().st_size <= loader.MAX_FILE_BYTES
    assert validate(path, capsys)[0] == 0
