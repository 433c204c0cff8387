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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aidi.api.errors import SpecError, from_pydantic
from aidi.api.pyconfig import run_config_file
from aidi.errors import NotFoundError, UsageError
from aidi_trainer.model import SEG, HeadSpec

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


class _TaskFile(BaseModel):
    """One entry of ``tasks``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["det", "seg"] = Field(description="det (boxes) or seg (pixels)")
    scenes: dict[str, list[str]] = Field(min_length=1, description="each scene and its class names, in id order")
    weight: float = Field(1.0, description="the branch's share of the loss")
    flip: bool = Field(True, description="random horizontal flips")

    @model_validator(mode="after")
    def _scenes(self) -> _TaskFile:
        empty = [scene for scene, classes in self.scenes.items() if not classes]
        if empty:
            raise ValueError(f"scenes {empty} must each list their class names")
        if self.kind == SEG and len(self.scenes) != 1:
            raise ValueError(f"a segmentation branch reads exactly one scene, got {list(self.scenes)}")
        return self


class _StepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(ge=0)
    lr: float
    max_iters: int | None = Field(None, ge=1, description="per epoch; default one pass over the largest task's data")


class _ConfigFile(BaseModel):
    """The module-level names of a training config file (docs/trainer.md)."""

    model_config = ConfigDict(extra="forbid")

    input_size: tuple[int, int] = Field(description="(width, height), multiples of the backbone's stride")
    backbone: list[tuple[int, int]] = Field(min_length=1, description="[(channels, stride), ...]")
    head_channels: int = Field(32, ge=1)
    tasks: dict[str, _TaskFile] = Field(min_length=1, description="{branch: {kind, scenes, weight, flip}}")
    batch_size: int = Field(8, ge=1, description="per device, per task")
    workers: int = Field(2, ge=1, description="decoding threads per task")
    steps: dict[str, _StepFile] = Field(description=f"{{step: {{epochs, lr}}}} for {', '.join(TRAINED_STEPS)}")
    log_interval: int = Field(20, ge=1)
    seed: int = 0
    datasets: str = Field("datasets.yaml", description="the datasets.yaml, relative to the config")
    wd: float = 1e-4
    calibration_batches: int = Field(4, ge=1)
    pipeline_test: dict[str, Any] = Field(default_factory=dict, description="overrides for --pipeline-test")

    @model_validator(mode="after")
    def _consistent(self) -> _ConfigFile:
        missing = [name for name in TRAINED_STEPS if name not in self.steps]
        if missing:
            raise ValueError(f"steps needs {', '.join(repr(m) for m in missing)} (one per trained step)")
        stride = 1
        for _, s in self.backbone:
            stride *= s
        width, height = self.input_size
        if width % stride or height % stride:
            raise ValueError(f"input_size {width}x{height} must be a multiple of the backbone stride {stride}")
        return self


def load_config(path: str | Path, pipeline_test: bool = False, datasets: str | Path | None = None) -> TrainConfig:
    """Read the config file; ``--pipeline-test`` applies its ``pipeline_test`` overrides."""
    path = Path(path)
    values = run_config_file(path, "config", "pass --config configs/4pe_resize/multitask.py")
    overrides = values.get("pipeline_test")
    if pipeline_test and isinstance(overrides, dict):  # anything else is reported by the schema below
        values = {**values, **overrides}
    try:
        raw = _ConfigFile.model_validate(values)
    except ValidationError as exc:
        raise SpecError(str(path), from_pydantic(exc, _ConfigFile)) from None
    tasks = {name: TaskConfig(name, task.kind, {scene: tuple(classes) for scene, classes in task.scenes.items()},
                              task.weight, task.flip) for name, task in raw.tasks.items()}
    steps = {name: StepConfig(raw.steps[name].epochs, raw.steps[name].lr, raw.steps[name].max_iters)
             for name in TRAINED_STEPS}
    return TrainConfig(
        path=path, input_size=raw.input_size, backbone=list(raw.backbone), head_channels=raw.head_channels,
        tasks=tasks, batch_size=raw.batch_size, workers=raw.workers, steps=steps, log_interval=raw.log_interval,
        seed=raw.seed, datasets=Path(datasets) if datasets else path.parent / raw.datasets, wd=raw.wd,
        calibration_batches=raw.calibration_batches,
    )


@dataclass(frozen=True)
class SceneFiles:
    scene: str
    rec: Path
    idx: Path


class _SceneSplits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str | None = Field(None, description="the scene's train .rec, relative to root")
    val: str | None = Field(None, description="the scene's val .rec, relative to root")


class _DatasetsFile(BaseModel):
    """datasets.yaml: ``root`` and ``scenes: {scene: {train: PATH, val: PATH}}``."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(".", description="a folder; relative to this file")
    scenes: dict[str, _SceneSplits] = Field(description="{<scene>: {train: PATH, val: PATH}}")


def load_datasets(path: Path, scenes: list[str], split: str) -> dict[str, SceneFiles]:
    """Resolve each scene's ``.rec``/``.idx`` for ``split`` from datasets.yaml.

    Format: ``root`` (a folder; relative to the yaml) and ``scenes: {scene: {train: PATH, val: PATH}}``
    (relative to ``root``); the ``.idx`` sits beside its ``.rec``.
    """
    if not path.is_file():
        raise NotFoundError(f"datasets file {path} does not exist; pass --datasets FILE or create it "
                            "(format in docs/trainer.md)")
    try:
        raw = _DatasetsFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise SpecError(str(path), from_pydantic(exc, _DatasetsFile)) from None
    root = Path(raw.root)
    if not root.is_absolute():
        root = path.parent / root
    found = {}
    for scene in scenes:
        entry = raw.scenes.get(scene)
        where = getattr(entry, split, None) if entry is not None else None
        if where is None:
            raise UsageError(f"{path}: scenes.{scene}.{split} is missing; add the path of {scene}'s {split} .rec")
        rec = Path(where)
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
