"""Python config files — the seed's form (`configs/4pe_<scene>/train.py`, `configs/4pe_resize/multitask.py`):
run the file, keep its top-level settings."""

from __future__ import annotations

import os
import runpy
import types
from pathlib import Path

from aidi.errors import NotFoundError, UsageError


def run_config_file(path: str | os.PathLike[str], what: str, hint: str) -> dict[str, object]:
    """The settings a config file defines: its top-level names, without private names, imports, functions
    and classes. ``what`` names the kind of config and ``hint`` says where the right one is, for the
    error a missing file gets."""
    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"{what} {file} does not exist; {hint}")
    try:
        namespace = runpy.run_path(str(file))
    except Exception as exc:
        raise UsageError(f"{file}: the config does not run: {type(exc).__name__}: {exc}") from exc
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType | types.FunctionType | type)}
