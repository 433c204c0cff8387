"""The trainer's entry points: tools/quanti_training_2step_fusion_bn.sh, the example code package that
train_job.yaml uploads, and what the job image's Dockerfile promises (it cannot be built here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "quanti_training_2step_fusion_bn.sh"
PACKAGE = REPO / "examples" / "auto_matrix_development_toolkit"
ALGO = PACKAGE / "scripts" / "auto_matrix_algo"
CONFIG = REPO / "configs" / "4pe_resize" / "multitask.py"


def run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env={**os.environ, "AIDI_PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)


def fake_recs(root: Path) -> Path:
    """A datasets.yaml whose rec files exist (empty): enough for --check, which reads no record."""
    scenes = yaml.safe_load((ALGO / "configs" / "4pe_resize" / "datasets.yaml").read_text())["scenes"]
    for scene in scenes:
        (root / scene).mkdir(parents=True)
        for name in ("train.rec", "train.idx", "val.rec", "val.idx"):
            (root / scene / name).touch()
    datasets = root / "datasets.yaml"
    datasets.write_text(yaml.safe_dump({"scenes": {s: {"train": f"{s}/train.rec", "val": f"{s}/val.rec"}
                                                   for s in scenes}}))
    return datasets


def test_the_code_package_carries_the_same_trainer_script_and_config_as_the_repository():
    assert (ALGO / "tools" / SCRIPT.name).read_bytes() == SCRIPT.read_bytes()
    assert (ALGO / "configs" / "4pe_resize" / "multitask.py").read_bytes() == CONFIG.read_bytes()


def test_the_code_package_fits_the_example_job_file():
    job = yaml.safe_load((REPO / "examples" / "train_job.yaml").read_text())
    upload = (REPO / "examples" / job["REQUIRED"]["UPLOAD_DIR"]).resolve()
    assert upload == PACKAGE.resolve()
    start = job["REQUIRED"]["RUN_SCRIPTS"].replace("${WORKING_PATH}", str(PACKAGE))
    assert os.access(start, os.X_OK)
    text = Path(start).read_text()
    assert "scripts/auto_matrix_algo/configs/4pe_resize/multitask.py" in text
    assert "--ctx" in text


def test_the_package_s_datasets_yaml_names_every_scene_under_the_job_s_dataspace_input():
    job = yaml.safe_load((REPO / "examples" / "train_job.yaml").read_text())["OPTIONAL"]["DATA_SPACE"]
    datasets = yaml.safe_load((ALGO / "configs" / "4pe_resize" / "datasets.yaml").read_text())
    assert datasets["root"] == f"/data_space/input/{job['INPUT']}/{job['DATA_TYPE']}/latest"
    repo_scenes = yaml.safe_load((REPO / "configs" / "4pe_resize" / "datasets.yaml").read_text())["scenes"]
    assert datasets["scenes"] == repo_scenes  # same relative layout as data/rec/ that tools/pipeline.sh writes


def test_run_sh_starts_the_trainer_with_the_package_s_config(tmp_path):
    datasets = fake_recs(tmp_path / "rec")
    done = run("bash", str(PACKAGE / "run.sh"), "--check", "--datasets", str(datasets),
               AIDI_CTX="cpu", WORKING_PATH=str(PACKAGE))
    assert done.returncode == 0, done.stderr
    assert f"config: {ALGO / 'configs' / '4pe_resize' / 'multitask.py'}" in done.stdout
    assert "det_vehicle_sign" in done.stdout and "seg_lane" in done.stdout


def test_asking_for_gpus_here_fails_with_the_ctx_cpu_hint(tmp_path):
    datasets = fake_recs(tmp_path / "rec")
    done = run("bash", str(SCRIPT), "--config", str(CONFIG), "--datasets", str(datasets), "--ctx", "0,1,2,3",
               "--check")
    assert done.returncode == 2
    assert "use --ctx cpu" in done.stderr


def test_a_python_without_the_trainer_is_named_with_the_fix(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    done = run("bash", str(SCRIPT), "--help", AIDI_PYTHON=str(python))
    assert done.returncode == 127
    assert "cannot import aidi_trainer" in done.stderr and "pip install 'aidi[trainer]'" in done.stderr


def test_help_shows_the_seed_commands():
    done = run("bash", str(SCRIPT), "--help")
    assert done.returncode == 0
    for flag in ("--config", "--ctx", "--pipeline-test", "--output", "--datasets"):
        assert flag in done.stdout


def test_the_images_build_from_a_current_python_3_11_and_run_as_non_root():
    # The build itself is checked by tests/test_images.py (`make e2e-containers`); this is what the files say.
    constraints = (REPO / "constraints.txt").read_text()
    for name in ("jobimage", "operator"):
        dockerfile = (REPO / name / "Dockerfile").read_text()
        base = re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.(\d+)-slim-bookworm$", dockerfile, re.M)
        assert base and int(base.group(1)) >= 13, name  # a current patch release, with its security fixes
        assert re.findall(r"^FROM (\S+)", dockerfile, re.M)[-1] == "${PYTHON_IMAGE}"
        assert "-c constraints.txt" in dockerfile
        user = re.findall(r"^USER (\S+)", dockerfile, re.M)
        assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", name
        # Every file the build copies exists (the build context is the repository root).
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
            for path in source.split():
                assert (REPO / path).exists(), path
    jobimage = (REPO / "jobimage" / "Dockerfile").read_text()
    assert "ARG MXNET=mxnet-cu112" in jobimage
    assert "mxnet-cu112==1.9.1" in constraints and "numpy==1.23.5" in constraints
    wheels = re.search(r'^ARG CUDA_WHEELS="(.+)"$', jobimage, re.M).group(1).split()
    assert wheels and all(w.endswith("-cu11") for w in wheels)  # CUDA 11: what mxnet-cu112 links against
    for wheel in wheels:
        assert re.search(rf"^{wheel}==\S+$", constraints, re.M), f"{wheel} is not pinned in constraints.txt"


def test_the_installed_trainer_imports_and_its_module_entry_runs():
    done = run(sys.executable, "-c", "import aidi_trainer.cli, aidi_trainer.pipeline, aidi.cli.aidi_main; "
                                     "print(aidi_trainer.cli.default_output())")
    assert done.returncode == 0, done.stderr
    done = run(sys.executable, "-m", "aidi_trainer", "--help")
    assert done.returncode == 0 and "int-inference" in done.stdout
