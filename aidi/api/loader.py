"""Load a job file in either form — AIDI's train_job.yaml or a TrainJob CR — into one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import SecretStr, ValidationError

from aidi.api import aidi_form
from aidi.api import trainjob as tj
from aidi.api.errors import FieldError, SpecError, from_pydantic

Form = Literal["aidi", "cr"]


@dataclass
class JobFile:
    """A validated job: the CR to submit, plus what only the workstation knows."""

    job: tj.TrainJob
    form: Form
    source: str
    upload_dir: Path | None = None
    # SecretStr keeps the password out of reprs, logs and tracebacks.
    password: SecretStr | None = field(default=None, repr=False)


def _read_yaml(text: str, source: str) -> Any:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(where, [FieldError("", f"YAML syntax error: {problem}; fix the indentation or quoting "
                                               "on that line")]) from None
    if not docs:
        raise SpecError(source, [FieldError("", "the file is empty; see examples/train_job.yaml")])
    if len(docs) > 1:
        raise SpecError(source, [FieldError("", f"the file holds {len(docs)} YAML documents; put one job per "
                                                "file")])
    return docs[0]


def load_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> JobFile:
    """Parse and validate a job file's text. Raises SpecError listing every problem."""
    doc = _read_yaml(text, source)
    if not isinstance(doc, dict):
        raise SpecError(source, [FieldError("", "expected a mapping at the top level; see examples/train_job.yaml")])
    base = base_dir or Path(".")
    if aidi_form.is_aidi_form(doc):
        parsed, errors = aidi_form.parse(doc)
        if errors or parsed is None:
            raise SpecError(source, errors)
        try:
            job = aidi_form.to_trainjob(parsed)
        except ValidationError as exc:
            raise SpecError(source, from_pydantic(exc, tj.TrainJob)) from None
        upload = Path(parsed.REQUIRED.UPLOAD_DIR)
        return JobFile(job=job, form="aidi", source=source,
                       upload_dir=upload if upload.is_absolute() else base / upload,
                       password=parsed.REQUIRED.JOB_PASSWD)
    if "apiVersion" in doc or "kind" in doc:
        errors = []
        if doc.get("apiVersion") != tj.API_VERSION:
            errors.append(FieldError("apiVersion", f"expected {tj.API_VERSION!r}, got {doc.get('apiVersion')!r}"))
        if doc.get("kind") != tj.KIND:
            errors.append(FieldError("kind", f"expected {tj.KIND!r}, got {doc.get('kind')!r}"))
        body = {k: v for k, v in doc.items() if k != "status"}
        try:
            job = tj.TrainJob.model_validate(body)
        except ValidationError as exc:
            errors.extend(e for e in from_pydantic(exc, tj.TrainJob) if e.path not in {"apiVersion", "kind"})
            raise SpecError(source, errors) from None
        if errors:
            raise SpecError(source, errors)
        return JobFile(job=job, form="cr", source=source)
    raise SpecError(source, [FieldError(
        "", "not a job file: expected REQUIRED/OPTIONAL sections (train_job.yaml) or "
            f"apiVersion: {tj.API_VERSION} with kind: {tj.KIND}",
    )])


def load_file(path: str | Path) -> JobFile:
    """Load a job file from disk; relative UPLOAD_DIRs are resolved against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [FieldError("", "no such file; pass the job file with -f PATH")]) from None
    return load_text(text, source=str(path), base_dir=path.parent)
