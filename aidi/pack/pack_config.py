"""Pack configs: ``configs/4pe_<scene>/train.py``, a Python file of plain assignments (docs/packing.md).

    scene = "vehicle"
    task = "detection"
    classes = ["vehicle"]
    source = "data/adas_mini/vehicle"
    output = "data/rec/vehicle"

Relative paths are relative to the current directory (the seed runs `tools/pipeline.sh` from the
toolkit's root, with the data under ``data/``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aidi.api.errors import SpecError, from_pydantic
from aidi.api.pyconfig import run_config_file


class PackConfig(BaseModel):
    """One scene's packing settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scene: str = Field(description="scene name; also the default folder names")
    task: Literal["detection", "parsing"]
    classes: list[str] = Field(min_length=1, description="class names; the index is the label")
    source: str = Field(description="the scene's raw folder (images/, annotations.json or masks/)")
    output: str = Field(description="where train/val .rec/.idx and manifest.json go")
    annotations: str = Field("annotations.json", description="detection: COCO JSON, relative to source")
    images: str = Field("images", description="parsing: image folder, relative to source")
    masks: str = Field("masks", description="parsing: mask folder, relative to source")
    resize: int | tuple[int, int] | None = Field(
        None, description="None: keep size (JPEGs pass through); N: shorter edge to N; (W, H): exact size")
    jpeg_quality: int = Field(95, ge=1, le=100, description="when re-encoding")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of images (by name hash) in val")

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        seen = [c for i, c in enumerate(classes) if c in classes[:i]]
        if seen:
            raise ValueError(f"class names must be unique; repeated: {', '.join(seen)}")
        return classes

    @model_validator(mode="after")
    def _sizes(self) -> PackConfig:
        sizes = [self.resize] if isinstance(self.resize, int) else list(self.resize or ())
        if any(s < 1 for s in sizes):
            raise ValueError(f"resize must be positive, got {self.resize}")
        if self.task == "parsing" and len(self.classes) > 255:
            raise ValueError("a parsing scene has at most 255 classes (mask value 255 means ignore)")
        return self

    def settings(self) -> dict[str, object]:
        """What decides the packed bytes (besides the input): recorded in the manifest."""
        return self.model_dump(mode="json", exclude={"source", "output"})

    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.settings().items())).encode()).hexdigest()


def load_config(path: str | os.PathLike[str], **overrides: object) -> PackConfig:
    """Run the config file and check its settings; ``overrides`` (not None) replace its values."""
    file = Path(path)
    values = run_config_file(file, "pack config", "the 8 scenes' configs are configs/4pe_<scene>/train.py")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PackConfig(**values)
    except ValidationError as exc:
        raise SpecError(str(file), from_pydantic(exc, PackConfig)) from None
