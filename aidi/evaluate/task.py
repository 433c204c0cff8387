"""``hitc evaltask submit -f eval_task.yaml``: an evaluation run as a job (docs/phase2.md).

The task names its ground truth and predictions in the dataspace (``dataspace://NAME/TYPE/VERSION[/PATH]``,
e.g. what ``hitc dataspace upload -d DATASET -t gt|pr`` bound). On a Kubernetes cluster it becomes a
TrainJob whose one CPU pod runs ``aidi eval`` on those references and writes to ``/data_space/output``,
which the pod syncs to the ``OUTPUT`` dataset. On this machine (``--local``, or a ``type: local`` cluster)
the same evaluation runs in-process and its folder is uploaded as that dataset's next version.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from aidi.api.sections import Section, Sections, Text, load_sections
from aidi.api.trainjob import DNS1123_LABEL, MAX_JOB_NAME
from aidi.dataspace import refs as dsref
from aidi.errors import UsageError

POD_OUTPUT = "/data_space/output"


def _dataspace_ref(value: str, info: ValidationInfo) -> str:
    if not dsref.is_ref(value):
        kind = str(info.field_name).lower()
        raise ValueError(f"{value!r}: the job reads from the dataspace; give dataspace://NAME/TYPE/VERSION[/PATH] "
                         f"(upload with `hitc dataspace upload -d NAME -t {kind} -f FILE.json`)")
    return dsref.check(value)


class EvalTaskRequired(Section):
    TASK_NAME: Text = Field(description=f"names the job: lower-case letters, digits and '-' (at most {MAX_JOB_NAME})")
    GT: Text = Field(description="the ground truth: dataspace://NAME/gt/VERSION[/PATH]")
    PR: Text = Field(description="the predictions: dataspace://NAME/pr/VERSION[/PATH]")

    @field_validator("TASK_NAME")
    @classmethod
    def _job_name(cls, name: str) -> str:
        if not re.match(DNS1123_LABEL, name) or len(name) > MAX_JOB_NAME:
            raise ValueError(f"{name!r}: use lower-case letters, digits and '-' (at most {MAX_JOB_NAME}); it names "
                             "the job")
        return name

    _refs = field_validator("GT", "PR")(_dataspace_ref)


class EvalTaskOptional(Section):
    IOU_THRESHOLD: float = Field(0.5, ge=0.0, le=1.0, description="a detection matches at this IoU or above")
    SCORE_THRESHOLD: float = Field(0.3, ge=0.0, le=1.0, description="detections scoring below this are dropped")
    CLASSES: list[str] = Field(default_factory=list, description="only these classes (default: all)")
    OUTPUT: str | None = Field(None, description="the dataset the results become (default: TASK_NAME)")
    DOCKER_IMAGE: str | None = None
    PROJECT_ID: str | None = None
    PRIORITY: int = Field(3, ge=1, le=5, description="1-5, 5 highest")


class EvalTaskFile(Sections):
    """``eval_task.yaml`` (docs/phase2.md)."""

    REQUIRED: EvalTaskRequired
    OPTIONAL: EvalTaskOptional = Field(default_factory=EvalTaskOptional)


@dataclass
class EvalTask:
    name: str
    gt: str
    pr: str
    iou: float = 0.5
    score_threshold: float = 0.3
    classes: list[str] = field(default_factory=list)
    output: str = ""
    image: str | None = None
    project_id: str | None = None
    priority: int = 3


def load_eval_task(path: str | Path) -> EvalTask:
    doc = load_sections(Path(path), "eval_task.yaml", EvalTaskFile)
    req, opt = doc.REQUIRED, doc.OPTIONAL
    return EvalTask(name=req.TASK_NAME, gt=req.GT, pr=req.PR, iou=opt.IOU_THRESHOLD,
                    score_threshold=opt.SCORE_THRESHOLD, classes=opt.CLASSES, output=opt.OUTPUT or req.TASK_NAME,
                    image=opt.DOCKER_IMAGE, project_id=opt.PROJECT_ID, priority=opt.PRIORITY)


def eval_command(task: EvalTask, out: str = POD_OUTPUT) -> list[str]:
    command = ["aidi", "eval", "--gt", task.gt, "--pr", task.pr, "--iou", str(task.iou),
               "--score-thr", str(task.score_threshold), "--out", out]
    if task.classes:
        command += ["--classes", ",".join(task.classes)]
    return command


def eval_trainjob(task: EvalTask, namespace: str | None = None) -> Any:
    """The TrainJob that runs ``task`` on a cluster: one CPU pod, no code package, outputs to ``OUTPUT``."""
    from aidi.api.trainjob import TrainJob

    metadata: dict[str, Any] = {"name": task.name, "labels": {"aidi.io/kind": "evaltask"}}
    if namespace:
        metadata["namespace"] = namespace
    if task.project_id:
        metadata["labels"]["aidi.io/project"] = task.project_id
    spec: dict[str, Any] = {"command": eval_command(task), "gpusPerWorker": 0, "priority": task.priority,
                            "backoffLimit": 1, "dataSpace": {"output": {"name": task.output, "type": "dataset"}},
                            # An evaluation writes its results once, at the end: nothing to resume from.
                            "checkpoints": {"enabled": False}}
    if task.image:
        spec["image"] = task.image
    return TrainJob.model_validate({"apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob", "metadata": metadata,
                                    "spec": spec})


def resolve_input(text: str, dataspace: Any, workdir: Path, what: str) -> Path:
    """A local path for ``--gt``/``--pr``: a ``dataspace://`` reference is downloaded under ``workdir``; with
    no PATH the version's one ``.json`` (or ``.rec``) file is meant."""
    if not dsref.is_ref(text):
        return Path(text)
    ref = dsref.parse(text, what)
    local, version = dsref.fetch(ref, dataspace, workdir / what / ref.name / ref.type)
    if ref.path:
        return local
    candidates = sorted(p for p in local.rglob("*") if p.suffix in (".json", ".rec") and not p.name.startswith("_"))
    if len(candidates) != 1:
        names = ", ".join(p.relative_to(local).as_posix() for p in candidates) or "none"
        raise UsageError(f"{what} {text}: {ref.name}/{ref.type} {version} holds {len(candidates)} .json/.rec files "
                         f"({names}); name one: {text.rstrip('/')}/FILE")
    return candidates[0]


def run_local(task: EvalTask, dataspace: Any, workdir: Path | None = None) -> tuple[Any, Any]:
    """Run ``task`` here: fetch, evaluate, upload the results folder as the next version of ``task.output``."""
    from aidi import evaluate

    with tempfile.TemporaryDirectory(prefix="aidi-evaltask-") as tmp:
        root = Path(workdir or tmp)
        gt_path = resolve_input(task.gt, dataspace, root, "gt")
        pr_path = resolve_input(task.pr, dataspace, root, "pr")
        out_dir = root / "output"
        if gt_path.suffix == ".rec":
            gt = evaluate.gt_from_rec(gt_path, out_dir / "gt" / f"{gt_path.stem}_gt.json", task.classes or None)
        else:
            gt = evaluate.load_ground_truth(gt_path)
        outcome = evaluate.evaluate(gt, evaluate.load_predictions(pr_path), task.iou, task.score_threshold, out_dir)
        uploaded = dataspace.upload_dataset(task.output, "dataset", out_dir)
    return outcome, uploaded
