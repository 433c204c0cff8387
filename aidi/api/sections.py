"""Reading AIDI-style YAML files with upper-case ``REQUIRED`` / ``OPTIONAL`` sections (eval_task.yaml,
model_append.yaml; train_job.yaml has its own schema in ``aidi.api``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from aidi.errors import NotFoundError, UsageError


def read_sections(path: Path, what: str, required: Sequence[str],
                  optional: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(REQUIRED, OPTIONAL)`` of ``path``; unknown or missing fields are one error naming them all."""
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; write a {what} (example in docs/phase2.md)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("REQUIRED"), dict):
        raise UsageError(f"{path}: expected a REQUIRED section with {', '.join(required)} (see docs/phase2.md)")
    req, opt = data["REQUIRED"], data.get("OPTIONAL") or {}
    if not isinstance(opt, dict):
        raise UsageError(f"{path}: OPTIONAL must be a mapping of fields (see docs/phase2.md)")
    unknown = [str(k) for k in data if k not in ("REQUIRED", "OPTIONAL")] + \
        [f"REQUIRED.{k}" for k in req if k not in required] + [f"OPTIONAL.{k}" for k in opt if k not in optional]
    if unknown:
        raise UsageError(f"{path}: unknown fields {', '.join(unknown)}; the fields of a {what} are listed in "
                         "docs/phase2.md")
    missing = [k for k in required if not isinstance(req.get(k), str) or not req[k].strip()]
    if missing:
        raise UsageError(f"{path}: REQUIRED.{', REQUIRED.'.join(missing)} must be set (non-empty strings)")
    return req, opt
