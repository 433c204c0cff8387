"""Training progress records: what the trainer publishes and every reader (operator, local runner, traincli,
console) understands (docs/progress.md).

One record is one JSON object; the trainer writes each twice:

- appended as one line to ``<output>/progress.jsonl`` (append-only; synced to the dataspace with the
  checkpoints, so the whole history survives the pod and the job), and
- logged as one line ``... AIDI-PROGRESS {json}`` on the trainer's log (what a live reader of the pod's log
  sees at once, with the user's own rights to that log, and what the operator reads from the log's tail).

Record kinds (``"kind"``), every one with ``"v": 1`` and ``"time"`` (ISO 8601, UTC):

``plan``   ``{"steps": [{"step": 0, "name": "with-bn", "epochs": 2, "iterations": 40}, ...]}``  at the start
``step``   ``{"step": 1, "name": "fusion-bn-c1", "epochs": 2, "iterations": 40, "resumed_epoch": 0}``
``train``  ``{"step", "name", "epoch", "epochs", "iteration", "iterations", "global_iteration", "loss",
            "branches": {branch: loss}, "terms": {"branch.term": value}, "samples_per_sec", "lr",
            "eta_step_s", "eta_job_s"}``   every ``log_interval`` iterations
``val``    ``{"step", "name", "global_iteration", "branches": {branch: {"precision", "recall", ...} or
            {"miou", ...}}}``   after each trained step
``done``   ``{"seconds"}``   when all 4 steps are written

``iteration`` counts within the step (1..``iterations``); ``global_iteration`` across the trained steps, the
x axis of the curves. Readers ignore kinds and fields they do not know, so the trainer may add some.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aidi.api import trainjob as tj

MARKER = "AIDI-PROGRESS "
FILE_NAME = "progress.jsonl"
VERSION = 1
STEPS_TOTAL = 4  # the quantization pipeline's steps: 3 trained, then the integer conversion


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "kind": kind, "time": now_stamp(), **fields}


def encode(rec: dict[str, Any]) -> str:
    """One line, no spaces: a record never spans lines in the jsonl file or the log."""
    return json.dumps(rec, separators=(",", ":"), allow_nan=False, default=_finite)


def _finite(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def clean(value: Any) -> Any:
    """Floats rounded to 6 significant digits and non-finite ones as None: JSON has no NaN."""
    if hasattr(value, "item") and not isinstance(value, dict | list | tuple | str):
        value = value.item()  # numpy scalars (the trainer's figures)
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _parse_object(text: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(text)
    except ValueError:
        return None  # a line cut by a log rotation or a crash mid-write: skip it, keep the rest
    return rec if isinstance(rec, dict) and rec.get("v") == VERSION and isinstance(rec.get("kind"), str) else None


def parse_log(text: str) -> list[dict[str, Any]]:
    """The records in a log: every line carrying the marker (whatever prefix the logger put before it)."""
    found = []
    for line in text.splitlines():
        at = line.find(MARKER)
        if at >= 0 and (rec := _parse_object(line[at + len(MARKER):].strip())) is not None:
            found.append(rec)
    return found


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [rec for line in text.splitlines() if line.strip() and (rec := _parse_object(line)) is not None]


def read_file(path: str | Path) -> list[dict[str, Any]]:
    try:
        return parse_jsonl(Path(path).read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return []


def tail_text(path: str | Path, limit: int = 256 * 1024) -> str:
    """The last ``limit`` bytes of a log file (the first, cut line is skipped by the parsers)."""
    try:
        with open(path, "rb") as src:
            src.seek(0, 2)
            size = src.tell()
            src.seek(max(0, size - limit))
            return src.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class Writer:
    """Appends records to ``<output>/progress.jsonl`` (unless ``to_file`` is false) and hands each to ``emit``
    (the trainer's logger)."""

    def __init__(self, output: str | Path, emit: Any = None, to_file: bool = True) -> None:
        self.path = Path(output) / FILE_NAME
        self.emit = emit
        self.to_file = to_file

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = record(kind, **clean(fields))
        line = encode(rec)
        if self.to_file:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write of a whole line in append mode: a reader (or the sync of the output) sees whole lines,
            # and a crash loses at most the line being written, which readers skip.
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        if self.emit is not None:
            self.emit(MARKER + line)
        return rec


# ------------------------------------------------------------------------------------------ reading


def format_duration(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class Summary:
    """Where a run stands, from its records: what `traincli status`, the console and the job's status show."""

    step: int | None = None           # 0..3, the trainer's step index
    step_name: str | None = None
    steps_total: int = STEPS_TOTAL
    epoch: int | None = None
    epochs: int | None = None
    iteration: int | None = None
    iterations: int | None = None
    samples_per_sec: float | None = None
    eta_step_s: float | None = None
    eta_job_s: float | None = None
    loss: float | None = None
    branches: dict[str, float] = field(default_factory=dict)
    terms: dict[str, float] = field(default_factory=dict)
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    state: str = "starting"           # starting | training | validated | done
    updated: str | None = None

    @property
    def step_label(self) -> str | None:
        """``"2/4 fusion-bn-c1"``: the step counted from 1, as users count the pipeline's steps."""
        return None if self.step is None else f"{self.step + 1}/{self.steps_total} {self.step_name}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"step_label": self.step_label, "eta_step": format_duration(self.eta_step_s),
                               "eta_job": format_duration(self.eta_job_s)}

    def to_status(self) -> tj.TrainProgress:
        """The short form kept in the TrainJob's ``status.progress`` (``kubectl get trainjobs`` columns)."""
        done = self.state == "done"
        return tj.TrainProgress(
            step=f"{self.steps_total}/{self.steps_total} done" if done else self.step_label,
            epoch=f"{self.epoch}/{self.epochs}" if self.epoch is not None and not done else None,
            iteration=f"{self.iteration}/{self.iterations}" if self.iteration is not None and not done else None,
            samples_per_second=None if done else self.samples_per_sec,
            loss=self.loss, eta="0:00:00" if done else format_duration(self.eta_job_s),
            step_eta=None if done else format_duration(self.eta_step_s), updated=self.updated)


def summarize(records: Iterable[dict[str, Any]]) -> Summary | None:
    """The latest state of a run; None when it has published nothing yet."""
    summary: Summary | None = None
    for rec in records:
        kind = rec.get("kind")
        summary = summary or Summary()
        summary.updated = rec.get("time") or summary.updated
        if kind == "plan":
            summary.steps_total = max(len(rec.get("steps") or []) + 1, summary.steps_total)
        elif kind == "step":
            summary.step, summary.step_name = rec.get("step"), rec.get("name")
            summary.epochs, summary.iterations = rec.get("epochs"), rec.get("iterations")
            summary.epoch = summary.iteration = None
            summary.state = "training"
        elif kind == "train":
            for key in ("step", "epoch", "epochs", "iteration", "iterations", "samples_per_sec", "eta_step_s",
                        "eta_job_s", "loss"):
                setattr(summary, key, rec.get(key))
            summary.step_name = rec.get("name")
            summary.branches = dict(rec.get("branches") or {})
            summary.terms = dict(rec.get("terms") or {})
            summary.state = "training"
        elif kind == "val":
            summary.val = dict(rec.get("branches") or {})
            summary.state = "validated"
        elif kind == "done":
            summary.state = "done"
            summary.step, summary.step_name = summary.steps_total - 1, "int-inference"
            summary.eta_job_s = summary.eta_step_s = 0.0
    return summary


# The validation figure plotted per branch kind: what tells a detection or a segmentation branch is learning.
VAL_CURVES = ("precision", "recall", "miou")


@dataclass
class Curves:
    """Series of (global iteration, value) for the plots."""

    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)        # branch → training loss
    val: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # branch → figure → points
    steps: list[tuple[int, str]] = field(default_factory=list)                    # where each step starts

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def empty(self) -> bool:
        return not self.loss and not self.val


def curves(records: Iterable[dict[str, Any]]) -> Curves:
    out = Curves()
    base = 0  # global iteration at the start of the current step, for records that lack global_iteration
    for rec in records:
        kind = rec.get("kind")
        if kind == "step":
            x = int(rec.get("global_start") or base)
            if not out.steps or out.steps[-1][1] != rec.get("name"):
                out.steps.append((x, str(rec.get("name"))))
        elif kind == "train":
            x = int(rec.get("global_iteration") or 0)
            base = x - int(rec.get("iteration") or 0)
            for branch, value in (rec.get("branches") or {}).items():
                if isinstance(value, int | float):
                    out.loss.setdefault(branch, []).append((x, float(value)))
        elif kind == "val":
            x = int(rec.get("global_iteration") or 0)
            for branch, figures in (rec.get("branches") or {}).items():
                for name in VAL_CURVES:
                    value = (figures or {}).get(name)
                    if isinstance(value, int | float):
                        out.val.setdefault(branch, {}).setdefault(name, []).append((x, float(value)))
    # A resumed run logs again from the checkpoint's iteration: keep the newest value of each x, in order.
    for series in [*out.loss.values(), *(s for figs in out.val.values() for s in figs.values())]:
        latest = dict(series)
        series[:] = sorted(latest.items())
    return out


def longest(*sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of several copies of one append-only history (the pod's log, the synced file), the most complete."""
    return max(sources, key=len, default=[])


def ended(progress: tj.TrainProgress | None, phase: str) -> tj.TrainProgress | None:
    """``status.progress`` once the job has ended: done when it succeeded; else where it stopped, no ETA."""
    if progress is None:
        return None
    if phase == "Succeeded":
        return tj.TrainProgress(step=f"{STEPS_TOTAL}/{STEPS_TOTAL} done", loss=progress.loss, eta="0:00:00",
                                updated=progress.updated)
    return progress.model_copy(update={"eta": None, "step_eta": None, "samples_per_second": None})


def status_from_log(text: str) -> tj.TrainProgress | None:
    """``status.progress`` from the tail of worker 0's log (what both runners do when a summary is due)."""
    summary = summarize(parse_log(text))
    return summary.to_status() if summary is not None and summary.state != "starting" else None
