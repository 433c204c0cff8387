"""The training config (``configs/4pe_resize/multitask.py``) and the ``datasets.yaml`` beside it.

The config is a Python file, as in the seed; the trainer reads these module-level names (the
format is documented with an example in docs/trainer.md):

``input_size`` (width, height), ``backbone`` ([(channels, stride), ...]), ``head_channels``,
``tasks`` ({branch: {kind, scenes, weight, flip}}), ``batch_size`` (per device, per task),
``workers`` (decoding threads per task), ``steps`` ({step: {epochs, lr}}), ``log_interval``,
``seed``, ``pipeline_test`` (overrides for ``--pipeline-test``), ``datasets`` (path of the
datasets.yaml, relative to the config).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aidi.api.pyconfig import run_config_file
from aidi.errors import NotFoundError, UsageError
from aidi_trainer.model import DET, SEG, HeadSpec

STEP_NAMES = ("with-bn", "fusion-bn-c1", "fusion-bn-c2", "int-inference")
TRAINED_STEPS = STEP_NAMES[:3]
SPLITS = ("train", "val")


@dataclass(frozen=True)
class TaskConfig:
    """One branch. ``scenes`` maps a scene to its class names, in the scene's class-id order."""

    name: str
    kind: str
    scenes: dict[str, tuple[str, ...]]
    weight: float = 1.0
    flip: bool = True

    @property
    def classes(self) -> list[str]:
        if self.kind == SEG:
            return list(next(iter(self.scenes.values())))
        return [name for classes in self.scenes.values() for name in classes]

    def head(self) -> HeadSpec:
        return HeadSpec(self.name, self.kind, len(self.classes))


@dataclass(frozen=True)
class StepConfig:
    epochs: int
    lr: float
    max_iters: int | None = None  # per epoch; None = one pass over the largest task's data


@dataclass(frozen=True)
class TrainConfig:
    path: Path
    input_size: tuple[int, int]
    backbone: list[tuple[int, int]]
    head_channels: int
    tasks: dict[str, TaskConfig]
    batch_size: int
    workers: int
    steps: dict[str, StepConfig]
    log_interval: int
    seed: int
    datasets: Path
    wd: float = 1e-4
    calibration_batches: int = 4

    def heads(self) -> list[HeadSpec]:
        return [task.head() for task in self.tasks.values()]


def _need(values: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in values:
        raise UsageError(f"{where}: `{key}` is missing; add it (see docs/trainer.md for an example)")
    return values[key]


def _task(name: str, raw: Any, where: str) -> TaskConfig:
    where = f"{where}: tasks[{name!r}]"
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: expected a dict with `kind` and `scenes`, got {raw!r}")
    kind = _need(raw, "kind", where)
    if kind not in (DET, SEG):
        raise UsageError(f"{where}: `kind` must be {DET!r} or {SEG!r}, got {kind!r}")
    scenes = _need(raw, "scenes", where)
    if not isinstance(scenes, Mapping) or not scenes:
        raise UsageError(f"{where}: `scenes` must map each scene to its list of class names, got {scenes!r}")
    if kind == SEG and len(scenes) != 1:
        raise UsageError(f"{where}: a segmentation branch reads exactly one scene, got {list(scenes)}")
    parsed = {}
    for scene, classes in scenes.items():
        if not isinstance(classes, list | tuple) or not classes:
            raise UsageError(f"{where}: scenes[{scene!r}] must be a non-empty list of class names, got {classes!r}")
        parsed[str(scene)] = tuple(str(c) for c in classes)
    return TaskConfig(name, kind, parsed, float(raw.get("weight", 1.0)), bool(raw.get("flip", True)))


def load_config(path: str | Path, pipeline_test: bool = False, datasets: str | Path | None = None) -> TrainConfig:
    """Read the config file; ``--pipeline-test`` applies its ``pipeline_test`` overrides."""
    path = Path(path)
    values = run_config_file(path, "config", "pass --config configs/4pe_resize/multitask.py")
    where = str(path)
    if pipeline_test:
        values = {**values, **dict(values.get("pipeline_test") or {})}
    tasks = {name: _task(name, raw, where) for name, raw in dict(_need(values, "tasks", where)).items()}
    raw_steps = dict(_need(values, "steps", where))
    steps = {}
    for name in TRAINED_STEPS:
        raw = _need(raw_steps, name, f"{where}: steps")
        steps[name] = StepConfig(int(_need(raw, "epochs", f"{where}: steps[{name!r}]")),
                                 float(_need(raw, "lr", f"{where}: steps[{name!r}]")), raw.get("max_iters"))
    width, height = (int(v) for v in _need(values, "input_size", where))
    backbone = [(int(c), int(s)) for c, s in _need(values, "backbone", where)]
    stride = 1
    for _, s in backbone:
        stride *= s
    if width % stride or height % stride:
        raise UsageError(f"{where}: input_size {width}x{height} must be a multiple of the backbone stride {stride}")
    datasets_path = Path(datasets) if datasets else path.parent / values.get("datasets", "datasets.yaml")
    return TrainConfig(
        path=path, input_size=(width, height), backbone=backbone,
        head_channels=int(values.get("head_channels", 32)), tasks=tasks,
        batch_size=int(values.get("batch_size", 8)), workers=int(values.get("workers", 2)), steps=steps,
        log_interval=int(values.get("log_interval", 20)), seed=int(values.get("seed", 0)),
        datasets=datasets_path, wd=float(values.get("wd", 1e-4)),
        calibration_batches=int(values.get("calibration_batches", 4)),
    )


@dataclass(frozen=True)
class SceneFiles:
    scene: str
    rec: Path
    idx: Path


def load_datasets(path: Path, scenes: list[str], split: str) -> dict[str, SceneFiles]:
    """Resolve each scene's ``.rec``/``.idx`` for ``split`` from datasets.yaml.

    Format: ``root`` (a folder; relative to the yaml) and ``scenes: {scene: {train: PATH, val: PATH}}``
    (relative to ``root``); the ``.idx`` sits beside its ``.rec``.
    """
    if not path.is_file():
        raise NotFoundError(f"datasets file {path} does not exist; pass --datasets FILE or create it "
                            "(format in docs/trainer.md)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("scenes"), Mapping):
        raise UsageError(f"{path}: expected `scenes: {{<scene>: {{train: PATH, val: PATH}}}}` at the top level")
    root = Path(raw.get("root", "."))
    if not root.is_absolute():
        root = path.parent / root
    found = {}
    for scene in scenes:
        entry = raw["scenes"].get(scene)
        if not isinstance(entry, Mapping) or split not in entry:
            raise UsageError(f"{path}: scenes.{scene}.{split} is missing; add the path of {scene}'s {split} .rec")
        rec = Path(entry[split])
        rec = rec if rec.is_absolute() else root / rec
        idx = rec.with_suffix(".idx")
        for needed in (rec, idx):
            if not needed.is_file():
                raise NotFoundError(f"{path}: scenes.{scene}.{split} → {needed} does not exist; pack it with "
                                    f"`bash tools/pipeline.sh --config configs/4pe_{scene}/train.py` or fix the path")
        found[scene] = SceneFiles(scene, rec, idx)
    return found


def check_classes(tasks: dict[str, TaskConfig], files: dict[str, SceneFiles]) -> None:
    """The class list of each scene's ``manifest.json`` (written by ``aidi pack``) must be the config's."""
    for task in tasks.values():
        for scene, classes in task.scenes.items():
            manifest = files[scene].rec.parent / "manifest.json"
            if not manifest.is_file():
                continue
            packed = json.loads(manifest.read_text()).get("classes")
            if packed is not None and list(packed) != list(classes):
                raise UsageError(f"tasks[{task.name!r}].scenes[{scene!r}] lists classes {list(classes)} but "
                                 f"{manifest} was packed with {packed}; make the config's list match the pack "
                                 "config's `classes` (same order)")
