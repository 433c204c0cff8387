"""The checked-in CRD is generated from the schema, is valid Kubernetes, and accepts what we submit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from aidi.api import crd
from aidi.api.loader import load_file
from tests.conftest import REPO

CRD_FILE = REPO / "crds" / "trainjobs.aidi.io.yaml"


def crd_validator() -> jsonschema.Draft7Validator:
    schema = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def test_checked_in_crd_matches_the_schema() -> None:
    assert CRD_FILE.read_text() == crd.render(), "regenerate: python -m aidi.api.crd -o crds/trainjobs.aidi.io.yaml"


def test_drift_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    edited = tmp_path / "crd.yaml"
    edited.write_text(CRD_FILE.read_text().replace("maximum: 16", "maximum: 32"))
    result = subprocess.run([sys.executable, "-m", "aidi.api.crd", "--check", str(edited)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "has drifted" in result.stderr and "python -m aidi.api.crd -o" in result.stderr
    assert crd.main(["--check", str(CRD_FILE)]) == 0


def test_crd_shape() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    names = doc["spec"]["names"]
    assert (doc["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == \
        ("aidi.io", "TrainJob", "trainjobs", ["tj"])
    assert doc["spec"]["scope"] == "Namespaced"
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:3] == ["Phase", "Workers", "GPUs"]
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    text = CRD_FILE.read_text()
    assert "$ref" not in text and "anyOf" not in text


@pytest.mark.skipif(shutil.which("kubernetes-validate") is None and
                    not (Path(sys.executable).parent / "kubernetes-validate").exists(),
                    reason="kubernetes-validate is not installed (it is in the [dev] extra)")
def test_crd_passes_kubernetes_validate_strict() -> None:
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([exe, "--strict", "-k", "1.30", str(CRD_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


@pytest.mark.parametrize("example", ["train_job.yaml", "trainjob.yaml"])
def test_examples_are_accepted_by_the_crd_schema(example: str) -> None:
    manifest = load_file(REPO / "examples" / example).job.to_wire()
    errors = list(crd_validator().iter_errors(manifest))
    assert errors == []


def test_crd_schema_rejects_what_the_models_reject() -> None:
    manifest = load_file(REPO / "examples" / "trainjob.yaml").job.to_wire()
    manifest["spec"]["gpusPerWorker"] = 17
    manifest["spec"]["priority"] = 0
    manifest["spec"]["dataSpace"]["inputs"][0]["version"] = "v0"
    messages = sorted(e.message for e in crd_validator().iter_errors(manifest))
    assert any("17 is greater than the maximum of 16" in m for m in messages)
    assert any("0 is less than the minimum of 1" in m for m in messages)
    assert any("'v0' does not match" in m for m in messages)
