"""``dataspace://NAME/TYPE/VERSION[/PATH]``: a file or folder inside a dataset version, as phase-2 files name
their inputs (eval_task.yaml's GT and PR, model_append.yaml's MODEL_PATH, `aidi eval --gt/--pr`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidi.errors import NotFoundError, UsageError

SCHEME = "dataspace://"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class DatasetRef:
    name: str
    type: str
    version: str
    path: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}/{self.type}/{self.version}" + (f"/{self.path}" if self.path else "")


def is_ref(text: str) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse(text: str, where: str = "") -> DatasetRef:
    prefix = f"{where}: " if where else ""
    parts = text[len(SCHEME):].strip("/").split("/", 3) if is_ref(text) else []
    escapes = len(parts) > 3 and ".." in parts[3].split("/")
    if len(parts) < 3 or not all(_PART.match(p) for p in parts[:3]) or escapes:
        raise UsageError(f"{prefix}{text!r}: expected dataspace://NAME/TYPE/VERSION[/PATH], e.g. "
                         "dataspace://adasmini_4pe/gt/latest/val_gt.json")
    return DatasetRef(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "")


def check(text: str) -> str:
    """``text`` if it is a well-formed reference; for schemas (pydantic validators), a ValueError with
    :func:`parse`'s words otherwise."""
    try:
        parse(text)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return text


def fetch(ref: DatasetRef, dataspace: Any, dest: str | Path) -> tuple[Path, str]:
    """Download the version ``ref`` names into ``dest``; return the local path of ``ref.path`` and the
    version it resolved to (``latest`` → ``v3``)."""
    manifest = dataspace.resolve(ref.name, ref.type, ref.version)
    dataspace.download_dataset(ref.name, ref.type, manifest.version, dest)
    local = Path(dest) / ref.path if ref.path else Path(dest)
    if not local.exists():
        files = ", ".join(sorted(f.path for f in manifest.files)[:5])
        raise NotFoundError(f"{ref}: {ref.name}/{ref.type} {manifest.version} has no {ref.path!r} (it has {files})")
    return local, manifest.version
