"""Validation errors that name the field and the fix, all of them at once."""

from __future__ import annotations

import collections.abc
import difflib
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from aidi.errors import UsageError


@dataclass(frozen=True)
class FieldError:
    """One problem in a job file: where it is, what is wrong, how to fix it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(UsageError):
    """An input file (a job file, a pack or training config, eval_task.yaml, ...) that does not follow its
    schema. Carries every problem found, not just the first; ``render()`` lists them, one per line."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.errors)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''}"
        lines = [head, *(f"  - {error}" for error in self.errors[:MAX_RENDERED_ERRORS])]
        if count > MAX_RENDERED_ERRORS:
            lines.append(f"  ... and {count - MAX_RENDERED_ERRORS} more; fix these first")
        return "\n".join(lines)


# A file with thousands of bad entries gets the first screenful, not megabytes.
MAX_RENDERED_ERRORS = 30
EXCERPT_CHARS = 60


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error quotes what was given, never a whole document."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# Values of these fields are never echoed back in an error message.
_SECRET_WORDS = ("passwd", "password", "secret", "token", "appkey")


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The closest allowed name, matching case-insensitively (users mix up case and underscores)."""
    folded = {c.lower().replace("_", ""): c for c in choices}
    hits = difflib.get_close_matches(word.lower().replace("_", ""), list(folded), n=1, cutoff=0.6)
    return folded[hits[0]] if hits else None


def dns1123_label(name: str, max_length: int = 63) -> str:
    """The nearest valid DNS-1123 label: lower case, [a-z0-9-], no leading/trailing dash."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")
    return label[:max_length].rstrip("-") or "job"


def dns1035_label(name: str, max_length: int = 63) -> str:
    """The nearest valid DNS-1035 label (a DNS-1123 label that starts with a letter): Service names."""
    label = dns1123_label(name, max_length)
    if not label[0].isalpha():
        label = ("job-" + label)[:max_length].rstrip("-")
    return label


def _step(annotation: Any, key: str | int) -> Any:
    """The annotation one step of an error location down: a model's field (by alias or name), a list's item, a
    dict's value (the key is the user's, e.g. a cluster's name), the first member of a union that has it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(key, int):
            return None
        for name, field in annotation.model_fields.items():
            if key in (name, field.alias):
                return field.annotation
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args and isinstance(key, int):
        return args[0]
    for arg in args:  # unions, Optional, Annotated
        found = _step(arg, key)
        if found is not None:
            return found
    return None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, collections.abc.Mapping):
        return None  # the next step is a key of the user's, not a field
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _field_hint(model: type[BaseModel] | None, key: str | int) -> str:
    if model is None or isinstance(key, int):
        return ""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field.description or ""
    return ""


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_pydantic(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> list[FieldError]:
    """Translate pydantic's errors into FieldErrors with the user's field names and a fix each."""
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))
        annotation: Any = root
        for part in loc[:-1]:
            annotation = _step(annotation, part)
        parent = _first_model(annotation)
        key = loc[-1] if loc else ""
        path = _path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        kind = err["type"]
        given = err.get("input")
        if any(word in str(part).lower() for part in loc for word in _SECRET_WORDS):
            given = "<hidden>"
        elif kind.startswith("int") and isinstance(given, bool):
            kind = "bool_as_number"
        hint = _field_hint(parent, key)
        if kind == "missing":
            parent_path = _path(loc[:-1]) or "the top level"
            message = f"required field is missing; add `{key}:` under {parent_path}"
            if hint:
                message += f" ({hint})"
        elif kind == "extra_forbidden":
            allowed = _field_names(parent)
            guess = did_you_mean(str(key), allowed)
            message = f"unknown field; did you mean `{guess}`?" if guess else "unknown field."
            message += f" Allowed here: {', '.join(allowed)}"
        elif kind == "bool_as_number":
            message = f"expected a whole number, got the boolean {excerpt(given)} (YAML reads true/yes/on as one)"
            if hint:
                message += f"; {hint}"
        elif kind in {"int_type", "int_parsing", "int_from_float"}:
            message = f"expected a whole number, got {excerpt(given)}"
            if hint:
                message += f"; {hint}"
        elif kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
            message = f"{excerpt(given)} is out of range ({err['msg'].lower()})"
            if hint:
                message += f"; {hint}"
        elif kind == "string_pattern_mismatch":
            # The field's description says what is allowed in words; the regex only when there is none.
            pattern = err.get("ctx", {}).get("pattern", "")
            message = f"{excerpt(given)} is not allowed here; " + (hint or f"it must match {pattern}")
        elif kind == "literal_error":
            message = f"{excerpt(given)} is not one of {err.get('ctx', {}).get('expected', '')}"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        elif kind in {"string_too_long", "string_too_short", "too_long", "too_short"}:
            message = f"{excerpt(given)}: {err['msg'].lower()}"
            if hint:
                message += f"; {hint}"
        else:
            message = f"{err['msg']} (got {excerpt(given)})"
            if hint:
                message += f"; {hint}"
        errors.append(FieldError(path, message))
    return errors
