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

from aidi.api.sections import read_sections
from aidi.api.trainjob import DNS1123_LABEL, MAX_JOB_NAME
from aidi.dataspace import refs as dsref
from aidi.errors import UsageError

POD_OUTPUT = "/data_space/output"
REQUIRED_KEYS = ("TASK_NAME", "GT", "PR")
OPTIONAL_KEYS = ("IOU_THRESHOLD", "SCORE_THRESHOLD", "CLASSES", "OUTPUT", "DOCKER_IMAGE", "PROJECT_ID", "PRIORITY")


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
    path = Path(path)
    required, optional = read_sections(path, "eval_task.yaml", REQUIRED_KEYS, OPTIONAL_KEYS)
    name = required["TASK_NAME"]
    if not re.match(DNS1123_LABEL, name) or len(name) > MAX_JOB_NAME:
        raise UsageError(f"{path}: REQUIRED.TASK_NAME {name!r}: use lower-case letters, digits and '-' (at most "
                         f"{MAX_JOB_NAME}); it names the job")
    task = EvalTask(name=name, gt=required["GT"].strip(), pr=required["PR"].strip(), output=name)
    for key, ref in (("GT", task.gt), ("PR", task.pr)):
        if dsref.is_ref(ref):
            dsref.parse(ref, f"{path}: REQUIRED.{key}")
        else:
            raise UsageError(f"{path}: REQUIRED.{key} {ref!r}: the job reads from the dataspace; give "
                             "dataspace://NAME/TYPE/VERSION[/PATH] (upload with `hitc dataspace upload -d NAME -t "
                             f"{key.lower()} -f FILE.json`)")
    for key, attr, low, high in (("IOU_THRESHOLD", "iou", 0.0, 1.0), ("SCORE_THRESHOLD", "score_threshold", 0.0, 1.0),
                                 ("PRIORITY", "priority", 1, 5)):
        if key in optional:
            value = optional[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
                raise UsageError(f"{path}: OPTIONAL.{key}: expected a number in [{low}, {high}], got {value!r}")
            setattr(task, attr, type(getattr(task, attr))(value))
    if "CLASSES" in optional:
        classes = optional["CLASSES"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise UsageError(f"{path}: OPTIONAL.CLASSES must be a list of class names")
        task.classes = classes
    for key, attr in (("OUTPUT", "output"), ("DOCKER_IMAGE", "image"), ("PROJECT_ID", "project_id")):
        if optional.get(key) is not None:
            setattr(task, attr, str(optional[key]))
    return task


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
                            "backoffLimit": 1, "dataSpace": {"output": {"name": task.output, "type": "dataset"}}}
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
