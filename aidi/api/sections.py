"""AIDI-style YAML files with upper-case ``REQUIRED`` / ``OPTIONAL`` sections (eval_task.yaml,
model_append.yaml; train_job.yaml has its own schema in ``aidi.api.aidi_form``).

Each file's schema is a pydantic model with a ``REQUIRED`` and an ``OPTIONAL`` section (:class:`Sections`);
:func:`load_sections` reads the file and reports every problem at once, each with its field path and fix,
in the rendering every input file shares (``aidi.api.errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from aidi.api.errors import FieldError, SpecError, from_pydantic
from aidi.api.loader import read_job_text, read_yaml
from aidi.errors import NotFoundError

# A required text field: surrounding blanks dropped, and not empty.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Section(BaseModel):
    """One section: its fields are the upper-case keys; anything else is a typo worth naming. Numbers are
    taken as text where text is expected (``PROJECT_ID: 2021005``)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Sections(BaseModel):
    """A whole file: ``REQUIRED`` and (optional) ``OPTIONAL``; subclasses narrow both."""

    model_config = ConfigDict(extra="forbid")


FileModel = TypeVar("FileModel", bound=Sections)


def load_sections(path: Path, what: str, model: type[FileModel]) -> FileModel:
    """``path`` validated against ``model``; a :class:`SpecError` lists every problem, each with its field."""
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; write a {what} (example in docs/phase2.md)")
    # The job file's reader: size cap, UTF-8, alias/depth bounds, duplicate keys refused.
    data = read_yaml(read_job_text(path), str(path), example="docs/phase2.md")
    if not isinstance(data, dict):
        raise SpecError(str(path), [FieldError("", f"expected a {what} with a REQUIRED section (see docs/phase2.md)")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(path), from_pydantic(exc, model)) from None
