"""Packing one scene: items → workers (aidi.pack.workers) → ``{train,val}.{rec,idx}`` + ``manifest.json``.

Streaming: a bounded window of batches is in flight, records go to disk in source order as they come
back, and nothing per image stays in memory. Outputs are written under temporary names and renamed
only when the whole scene packed, manifest last, so a failed or interrupted run never leaves a set that
looks complete, and never damages the previous one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aidi import __version__, recordio
from aidi.errors import AidiError
from aidi.pack import workers
from aidi.pack.pack_config import PackConfig
from aidi.pack.sources import fingerprint, in_val

MANIFEST = "manifest.json"
REJECTS = "rejects.txt"
SPLITS = ("train", "val")
FORMAT = "aidi-recordio/1"


class PackFailed(AidiError):
    """Bad inputs, listed in full; nothing was written."""

    def __init__(self, scene: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {file}: {reason}" for file, reason in problems)
        super().__init__(f"scene {scene}: {len(problems)} bad input(s), nothing written:\n{lines}\n"
                         "fix them, or pack the rest with --skip-bad (the rejects go to a file)")


@dataclass
class PackResult:
    scene: str
    output: Path
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    objects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    rejects_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def packed(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, object]:
        return {"scene": self.scene, "output": str(self.output), "up_to_date": self.up_to_date,
                "packed": self.packed, "train": self.counts["train"], "val": self.counts["val"],
                "objects": self.objects, "skipped": self.skipped, "errors": len(self.problems),
                "seconds": round(self.seconds, 3), "images_per_second": round(self.rate(), 1),
                "rejects_file": str(self.rejects_file) if self.rejects_file else None, "notes": self.notes}

    def rate(self) -> float:
        return self.packed / self.seconds if self.seconds > 0 else 0.0


def read_manifest(output: str | os.PathLike[str]) -> dict | None:
    try:
        return json.loads((Path(output) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _up_to_date(manifest: dict | None, output: Path, source_fingerprint: str, skip_bad: bool) -> bool:
    if not manifest or manifest.get("source", {}).get("fingerprint") != source_fingerprint:
        return False
    if manifest.get("counts", {}).get("skipped") and not skip_bad:
        return False  # the last run skipped bad inputs; without --skip-bad they must be reported again
    files = manifest.get("files", {})
    return bool(files) and all((output / name).is_file() and (output / name).stat().st_size == info.get("bytes")
                               for name, info in files.items())


def pack_scene(config: PackConfig, jobs: int | None = None, skip_bad: bool = False, force: bool = False,
               rejects: str | os.PathLike[str] | None = None, config_path: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> PackResult:
    """Pack one scene as ``config`` says. ``progress(done, total)`` is called as images finish."""
    started = time.monotonic()
    output = Path(config.output)
    result = PackResult(config.scene, output)
    source_fingerprint, total = fingerprint(config)
    if not force and _up_to_date(read_manifest(output), output, source_fingerprint, skip_bad):
        manifest = read_manifest(output) or {}
        result.up_to_date = True
        result.counts = {s: manifest["counts"][s] for s in SPLITS}
        result.objects = manifest["counts"].get("objects", result.objects)
        result.skipped = manifest["counts"].get("skipped", 0)
        result.seconds = time.monotonic() - started
        return result
    output.mkdir(parents=True, exist_ok=True)
    temp = {f"{split}.{ext}": output / f".{split}.{ext}.tmp-{os.getpid()}"
            for split in SPLITS for ext in ("rec", "idx")}
    complete = False
    try:
        # Every writer is closed (its threads stopped) even when another one's last write fails.
        with contextlib.ExitStack() as closing:
            writers = {split: closing.enter_context(recordio.IndexedRecordWriter(
                temp[f"{split}.rec"], temp[f"{split}.idx"], sha256=True, pipelined=True)) for split in SPLITS}
            _write_records(config, jobs or os.cpu_count() or 1, writers, result, total, progress)
        if result.problems and not skip_bad:
            raise PackFailed(config.scene, result.problems)
        digests = {f"{split}.{ext}": digest for split, writer in writers.items()
                   for ext, digest in zip(("rec", "idx"), writer.hexdigests(), strict=True)}
        result.rejects_file = _finish(config, output, temp, digests, result, source_fingerprint, config_path,
                                      rejects)
        complete = True
        if config.val_fraction > 0 and not result.counts["val"]:
            result.notes.append(f"no image fell into val (val_fraction {config.val_fraction} of {result.packed} "
                                "images, chosen by name hash); add images or raise val_fraction")
    finally:
        if not complete:
            for path in temp.values():
                path.unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    return result


def _write_records(config: PackConfig, jobs: int, writers: dict[str, recordio.IndexedRecordWriter],
                   result: PackResult, total: int, progress: Callable[[int, int], None] | None) -> None:
    """Append every good record to its split's writer, in source order; collect the problems."""
    done = 0
    for item, encoded in workers.encoded(config, jobs):
        if encoded.framed is None:
            result.problems.extend((item.image, reason) for reason in encoded.problems)
            result.skipped += item.index >= 0
        else:
            split = "val" if in_val(item.name, config.val_fraction) else "train"
            writers[split].write_framed(writers[split].count, encoded.framed)
            result.counts[split] += 1
            result.objects[split] += encoded.objects
        if item.index >= 0:
            done += 1
            if progress:
                progress(done, total)


def _finish(config: PackConfig, output: Path, temp: dict[str, Path], digests: dict[str, str], result: PackResult,
            source_fingerprint: str, config_path: str | None, rejects: str | os.PathLike[str] | None) -> Path | None:
    """Rename the finished files into place, manifest last; write or clear the rejects file."""
    files = {name: {"bytes": path.stat().st_size, "sha256": digests[name],
                    "records": result.counts[name.split(".")[0]]}
             for name, path in temp.items()}
    (output / MANIFEST).unlink(missing_ok=True)
    for name, path in temp.items():
        # Unlink first: ext4 flushes the new file to disk when a rename replaces an existing one.
        (output / name).unlink(missing_ok=True)
        os.rename(path, output / name)
    rejects_file = Path(rejects) if rejects else output / REJECTS
    if result.problems:
        rejects_file.write_text("".join(f"{file}\t{reason}\n" for file, reason in result.problems))
    else:
        rejects_file.unlink(missing_ok=True)
    manifest = {
        "format": FORMAT,
        "scene": config.scene,
        "task": config.task,
        "classes": config.classes,
        "counts": {**result.counts, "objects": result.objects, "skipped": result.skipped},
        "files": files,
        "record_layout": "detection: labels [4, 5, width, height, cls, xmin, ymin, xmax, ymax, ...] normalised; "
                         "payload JPEG" if config.task == "detection" else
                         "parsing: flag 2, labels [image_nbytes, mask_nbytes]; payload JPEG then mask PNG",
        "source": {"path": str(Path(config.source).resolve()), "fingerprint": source_fingerprint},
        "settings": {**config.settings(), "config": config_path},
        "rejects": str(rejects_file) if result.problems else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "aidi_version": __version__,
    }
    tmp = output / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, output / MANIFEST)
    return rejects_file if result.problems else None
