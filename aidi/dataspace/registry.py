"""Released models in the dataspace: versioned, immutable, every file with its md5 (docs/phase2.md).

    models/<name>/<version>/<relative path of each file>
    models/<name>/<version>/_claim.json                    the number taken (create-only), never removed
    models/<name>/<version>/_model.json                    written last: the version exists once this does
    models/<name>/<version>/compiled/<target>/...           artefacts added later (ONNX and its check log)
    models/<name>/<version>/compiled/<target>/_artifact.json written last for that artefact
    models/<name>/<version>/eval/<label>/...                 an `aidi eval` output (results.json, report.html, images)
    models/<name>/<version>/eval/<label>/_report.json        written last for that report

A version's ``lineage`` (aidi/dataspace/lineage.py) names the job that trained it (name, uid, image, code
package sha256), the exact dataset versions that job fetched, and the output version the files came from.

Versions are ``v1``, ``v2``, ...; a version's files never change once ``_model.json`` exists. As for
datasets (aidi/dataspace/datasets.py), an append claims its number with a create-only ``_claim.json`` (the
next one if that exists), creates its files and then the record, each create-only: two appends never share
a version, and nothing replaces a file of a released one. Compiled artefacts are added beside them (each
one write-once, with its own record, created last), so a model can be compiled after it was released
without becoming a new version.
"""

from __future__ import annotations

import builtins
import fnmatch
import getpass
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from aidi.api.sections import Section, Sections, Text, load_sections
from aidi.dataspace import lineage as lin
from aidi.dataspace import refs as dsref
from aidi.dataspace.datasets import CLAIM, CLAIM_ATTEMPTS, LATEST, NAME_RE, PENDING, VERSION_RE
from aidi.dataspace.store import ObjectExists, ObjectStore
from aidi.dataspace.transfer import run_parallel
from aidi.errors import IntegrityError, NotFoundError, UsageError

MODEL_RECORD = "_model.json"
ARTIFACT_RECORD = "_artifact.json"
REPORT_RECORD = "_report.json"
MODEL_FORMAT = "aidi.model/v1"
_RESERVED = ("compiled/", "eval/", MODEL_RECORD, CLAIM, PENDING)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    path: str
    size: int
    md5: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "md5": self.md5, "sha256": self.sha256}


@dataclass
class ModelVersion:
    name: str
    version: str
    files: list[ModelFile]
    created: str
    uploader: str
    source_job: str | None = None
    source: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    uri: str | None = None
    lineage: dict[str, Any] | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "name": self.name, "version": self.version, "created": self.created,
                "uploader": self.uploader, "source_job": self.source_job, "source": self.source,
                "description": self.description, "metrics": self.metrics,
                **({"lineage": self.lineage} if self.lineage else {}),
                "files": [f.to_json() for f in self.files],
                **({"artifacts": self.artifacts} if self.artifacts else {}),
                **({"reports": self.reports} if self.reports else {}), **({"uri": self.uri} if self.uri else {})}

    def all_metrics(self) -> dict[str, Any]:
        """The record's metrics, and the summaries of reports added after it (never replacing a recorded one)."""
        return {**{r["label"]: r["summary"] for r in self.reports if r.get("summary")}, **self.metrics}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> ModelVersion:
        try:
            return cls(name=data["name"], version=data["version"], created=data["created"],
                       uploader=data.get("uploader", "?"), source_job=data.get("source_job"),
                       source=data.get("source"), description=data.get("description"),
                       metrics=data.get("metrics") or {}, files=[ModelFile(**f) for f in data["files"]],
                       lineage=data.get("lineage"))
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"{where}: not a model record ({exc}); the version is damaged") from None


@dataclass
class AppendSpec:
    """``model_append.yaml``, parsed (docs/phase2.md)."""

    name: str
    path: Path | None = None                # a local folder or file
    dataspace: dsref.DatasetRef | None = None   # a job's output dataset (version, sub-folder)
    files: list[str] = field(default_factory=list)      # glob patterns; empty = every file
    source_job: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    reports: dict[str, Path] = field(default_factory=dict)  # label → the `aidi eval` output folder


def _md5_sha256(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128), "
                         "starting with a letter or digit")
    return name


def normalize_version(version: str | int) -> str:
    text = str(version).strip()
    if text.isdigit():
        text = f"v{text}"
    if text != LATEST and not VERSION_RE.match(text):
        raise UsageError(f"invalid model version {version!r}: use latest or v1, v2, ...")
    return text


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------- model_append.yaml


class ModelAppendRequired(Section):
    MODEL_NAME: Text = Field(description="letters, digits, '.', '_' and '-' (at most 128)")
    MODEL_PATH: Text = Field(description="a folder or file relative to this file, or dataspace://NAME/TYPE/VERSION[/PATH]")

    @field_validator("MODEL_NAME")
    @classmethod
    def _name(cls, name: str) -> str:
        try:
            return check_model_name(name)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("MODEL_PATH")
    @classmethod
    def _dataspace_ref(cls, source: str) -> str:
        return dsref.check(source) if dsref.is_ref(source) else source


class ModelAppendOptional(Section):
    FILES: list[str] = Field(default_factory=list, description="file names or glob patterns (default: every file)")
    SOURCE_JOB: str | None = None
    METRICS: dict[str, Any] = Field(default_factory=dict, description="figures to keep, e.g. {map: 0.81}")
    EVAL_RESULTS: dict[str, str] = Field(default_factory=dict, description="a name to a results.json of `aidi eval`, "
                                                                           "e.g. {vehicle: eval/vehicle/results.json}")
    DESCRIPTION: str | None = None

    @field_validator("FILES", mode="before")
    @classmethod
    def _one_pattern(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else (value or [])

    @field_validator("METRICS", "EVAL_RESULTS", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any) -> Any:
        return value or {}


class ModelAppendFile(Sections):
    """``model_append.yaml`` (docs/phase2.md)."""

    REQUIRED: ModelAppendRequired
    OPTIONAL: ModelAppendOptional = Field(default_factory=ModelAppendOptional)


def load_append_spec(path: str | Path) -> AppendSpec:
    """Read ``model_append.yaml``: AIDI-style ``REQUIRED`` / ``OPTIONAL`` sections, paths relative to it."""
    path = Path(path)
    doc = load_sections(path, "model_append.yaml", ModelAppendFile)
    req, opt = doc.REQUIRED, doc.OPTIONAL
    spec = AppendSpec(name=req.MODEL_NAME, files=opt.FILES, source_job=opt.SOURCE_JOB, metrics=dict(opt.METRICS),
                      description=opt.DESCRIPTION)
    if dsref.is_ref(req.MODEL_PATH):
        spec.dataspace = dsref.parse(req.MODEL_PATH, f"{path}: REQUIRED.MODEL_PATH")
    else:
        spec.path = (path.parent / req.MODEL_PATH).resolve()
        if not spec.path.exists():
            raise NotFoundError(f"{path}: REQUIRED.MODEL_PATH {req.MODEL_PATH!r}: {spec.path} does not exist")
    for label, file in opt.EVAL_RESULTS.items():
        check_report_label(str(label))
        results = path.parent / file
        spec.metrics[str(label)] = eval_summary(results, f"{path}: OPTIONAL.EVAL_RESULTS.{label}")
        spec.reports[str(label)] = results.parent
    return spec


def check_report_label(label: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", label):
        raise UsageError(f"invalid report label {label!r}: use letters, digits, '.', '_' and '-', e.g. vehicle")
    return label


def eval_summary(results_path: Path, where: str) -> dict[str, Any]:
    """The figures of an ``aidi eval`` results.json worth keeping with a model: the summary and per-class AP/IoU."""
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where}: cannot read {results_path} as an `aidi eval` results.json ({exc})") from None
    if not isinstance(data, dict) or "summary" not in data:
        raise UsageError(f"{where}: {results_path} is not an `aidi eval` results.json (no summary)")
    summary = {"task": data.get("task"), **data["summary"]}
    if data.get("task") == "detection":
        summary["iou_threshold"] = data.get("iou_threshold")
        summary["ap_per_class"] = {c["class"]: c.get("ap_all_point") for c in data.get("classes", [])}
    elif data.get("task") == "parsing":
        summary["iou_per_class"] = {c["class"]: c.get("iou") for c in data.get("classes", [])}
    return summary


def main_figure(value: Any) -> tuple[str, float] | None:
    """The one figure that ranks a model on a report: mAP for detection, mIoU for parsing; a plain number as is."""
    if isinstance(value, dict):
        for key, label in (("map_all_point", "mAP"), ("miou", "mIoU"), ("map_voc11", "mAP")):
            if isinstance(value.get(key), int | float):
                return label, float(value[key])
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "", float(value)
    return None


def metric_columns(records: list[ModelVersion]) -> tuple[dict[str, str], list[list[float | None]]]:
    """Versions side by side (`hitc model list --metrics`, the console's models page): one column per metric any
    of them has, headed "vehicle mAP", "seg_lane mIoU", ...; each version's figure or None."""
    columns: dict[str, str] = {}
    for r in records:
        for key, value in r.all_metrics().items():
            fig = main_figure(value)
            if fig is not None:
                columns.setdefault(key, f"{key} {fig[0]}".strip())
    rows = []
    for r in records:
        metrics = r.all_metrics()
        rows.append([None if (fig := main_figure(metrics.get(key))) is None else fig[1] for key in columns])
    return columns, rows


def select_files(root: Path, patterns: list[str]) -> list[tuple[str, Path]]:
    """``(relative path, file)`` under ``root`` (or ``root`` itself) matching ``patterns`` (all when none)."""
    if root.is_file():
        pairs = [(root.name, root)]
    else:
        pairs = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    if patterns:
        pairs = [(rel, p) for rel, p in pairs
                 if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    pairs = [(rel, p) for rel, p in pairs if not rel.startswith(_RESERVED)]
    if not pairs:
        raise NotFoundError(f"no files to store under {root}" + (f" matching {patterns}" if patterns else "")
                            + "; check MODEL_PATH and FILES")
    return pairs


# ------------------------------------------------------------------------------------------ registry


class ModelRegistry:
    """Model versions on ``store`` (an ``aidi.dataspace`` object store)."""

    def __init__(self, store: ObjectStore, jobs: int = 4, uploader: str | None = None) -> None:
        self.store = store
        self.jobs = jobs
        self.uploader = uploader

    def prefix(self, name: str, version: str) -> str:
        return f"models/{name}/{version}/"

    # -- write -------------------------------------------------------------------------------------------

    def append(self, name: str, files: list[tuple[str, Path]], *, source_job: str | None = None,
               source: str | None = None, metrics: dict[str, Any] | None = None,
               description: str | None = None, lineage: dict[str, Any] | None = None) -> ModelVersion:
        """Store ``files`` as the next version of ``name``; the record is written last."""
        check_model_name(name)
        described = run_parallel(lambda pair: (pair, _md5_sha256(pair[1]), pair[1].stat().st_size), files, self.jobs)
        version = self._claim(name)
        prefix = self.prefix(name, version)

        def put(item: tuple[tuple[str, Path], tuple[str, str], int]) -> ModelFile:
            (rel, file), (md5, sha), size = item
            self._create(prefix + rel, file, md5, sha)
            return ModelFile(rel, size, md5, sha)

        entries = run_parallel(put, described, self.jobs)
        record = ModelVersion(name=name, version=version, files=entries, created=_now(),
                              uploader=self.uploader or getpass.getuser(), source_job=source_job, source=source,
                              metrics=metrics or {}, description=description, lineage=lineage)
        # Only this append writes under its claimed version, so the record cannot exist yet; create-only
        # all the same, so that nothing could ever replace a released version's record.
        self.store.put_bytes(prefix + MODEL_RECORD, json.dumps(record.to_json(), indent=1).encode(),
                             create_only=True)
        record.uri = self.store.uri(prefix)
        return record

    def _create(self, key: str, file: Path, md5: str, sha: str) -> None:
        """Create ``key`` from ``file``; one already there is ours only if it has this content (the answer
        to a first attempt was lost)."""
        try:
            self.store.put_file(key, file, metadata={"md5": md5, "sha256": sha}, create_only=True)
        except ObjectExists:
            stored = self.store.stat(key)
            if stored is None or stored.sha256 != sha:
                raise IntegrityError(f"{self.store.uri(key)} exists with other content, written by another "
                                     "append; nothing of this one was released: append again") from None

    def append_spec(self, spec: AppendSpec, dataspace: Any = None) -> ModelVersion:
        """Append what ``model_append.yaml`` names; a dataspace source is fetched to a temporary folder first.

        The job record among the files (``aidi-job.json``, written by the job's fetch step) becomes the
        version's lineage; the reports of ``EVAL_RESULTS`` are stored with it (``eval/<label>/``)."""
        if spec.dataspace is None:
            assert spec.path is not None
            lineage = lin.lineage_of(lin.read_job_record(spec.path))
            record = self.append(spec.name, select_files(spec.path, spec.files), source_job=self._job(spec, lineage),
                                 source=str(spec.path), metrics=spec.metrics, description=spec.description,
                                 lineage=lineage)
        else:
            if dataspace is None:
                raise UsageError(f"MODEL_PATH {spec.dataspace} needs the dataspace; run `hitc init` first")
            with tempfile.TemporaryDirectory(prefix="aidi-model-") as tmp:
                root, version = dsref.fetch(spec.dataspace, dataspace, tmp)
                source = dsref.DatasetRef(spec.dataspace.name, spec.dataspace.type, version, spec.dataspace.path)
                lineage = lin.lineage_of(lin.read_job_record(Path(tmp)), {
                    "name": source.name, "type": source.type, "version": version})
                record = self.append(spec.name, select_files(root, spec.files), source_job=self._job(spec, lineage),
                                     source=str(source), metrics=spec.metrics, description=spec.description,
                                     lineage=lineage)
        for label, folder in spec.reports.items():
            record.reports.append(self.attach_report(record.name, record.version, label, folder))
        return record

    @staticmethod
    def _job(spec: AppendSpec, lineage: dict[str, Any] | None) -> str | None:
        return spec.source_job or ((lineage or {}).get("job") or {}).get("name")

    def attach_report(self, name: str, version: str, label: str, folder: Path) -> dict[str, Any]:
        """Store an ``aidi eval`` output folder (results.json, report.html and its pictures) with a version,
        under ``eval/<label>/``; write-once, its record last."""
        check_report_label(label)
        record = self.show(name, version)
        folder = Path(folder)
        summary = eval_summary(folder / "results.json", f"report {label}")
        prefix = self.prefix(name, record.version) + f"eval/{label}/"
        if self.store.stat(prefix + REPORT_RECORD) is not None:
            raise UsageError(f"{name} {record.version} already has a report {label!r} ({self.store.uri(prefix)}); "
                             "reports are write-once — give this one another label")
        files = [(rel, p) for rel, p in select_files(folder, []) if not rel.endswith(".tmp")]
        entries = []
        for rel, file in files:
            md5, sha = _md5_sha256(file)
            self.store.put_file(prefix + rel, file, metadata={"md5": md5, "sha256": sha})
            entries.append(ModelFile(rel, file.stat().st_size, md5, sha).to_json())
        report = {"label": label, "created": _now(), "summary": summary, "files": entries,
                  "report": "report.html" if (folder / "report.html").is_file() else None}
        try:
            self.store.put_bytes(prefix + REPORT_RECORD, json.dumps(report, indent=1).encode(), create_only=True)
        except ObjectExists:
            raise UsageError(f"{name} {record.version} got a report {label!r} from another run meanwhile; give "
                             "this one another label") from None
        return report

    def attach(self, name: str, version: str, target: str, files: list[tuple[str, Path]],
               info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a compiled artefact (and its log) with an existing version under ``compiled/<target>/``."""
        record = self.show(name, version)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", target):
            raise UsageError(f"invalid artefact target {target!r}")
        prefix = self.prefix(name, record.version) + f"compiled/{target}/"
        if self.store.stat(prefix + ARTIFACT_RECORD) is not None:
            raise UsageError(f"{name} {record.version} already has a compiled {target} artefact "
                             f"({self.store.uri(prefix)}); artefacts are write-once — release a new model version")
        entries = []
        for rel, file in files:
            md5, sha = _md5_sha256(file)
            self.store.put_file(prefix + rel, file, metadata={"md5": md5, "sha256": sha})
            entries.append(ModelFile(rel, file.stat().st_size, md5, sha).to_json())
        artifact = {"target": target, "created": _now(), "files": entries, **(info or {})}
        try:
            self.store.put_bytes(prefix + ARTIFACT_RECORD, json.dumps(artifact, indent=1).encode(), create_only=True)
        except ObjectExists:
            raise UsageError(f"{name} {record.version} got a compiled {target} artefact from another run meanwhile "
                             f"({self.store.uri(prefix)}); artefacts are write-once — release a new model "
                             "version") from None
        return artifact

    def _claim(self, name: str) -> str:
        """The next free version number, taken with a create-only claim (the one after, if another append
        took it first)."""
        used = [int(m.group(1)) for info in self.store.list(f"models/{name}/", recursive=False)
                if info.is_dir and (m := VERSION_RE.match(info.key.rstrip("/").rsplit("/", 1)[-1]))]
        number = max(used, default=0)
        claim = {"upload_id": secrets.token_hex(8), "uploader": self.uploader or getpass.getuser(), "started": _now(),
                 "pid": os.getpid()}
        holder: dict[str, Any] = {}
        for _ in range(CLAIM_ATTEMPTS):
            number += 1
            key = self.prefix(name, f"v{number}") + CLAIM
            try:
                self.store.put_bytes(key, json.dumps(claim).encode(), create_only=True)
                return f"v{number}"
            except ObjectExists:
                try:
                    holder = json.loads(self.store.get_bytes(key))
                except (NotFoundError, ValueError):
                    holder = {}
                if holder.get("upload_id") == claim["upload_id"]:  # our first attempt's answer was lost
                    return f"v{number}"
        raise UsageError(f"could not claim a version of model {name}: v{number - CLAIM_ATTEMPTS + 1} to v{number} "
                         f"were all taken by other appends meanwhile (the last by {holder.get('uploader', '?')}, "
                         f"started {holder.get('started', '?')}); try again")

    # -- read --------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [info.key.rstrip("/").rsplit("/", 1)[-1] for info in self.store.list("models/", recursive=False)
                if info.is_dir]

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        numbers = [int(m.group(1)) for info in self.store.list(f"models/{name}/", recursive=False)
                   if info.is_dir and (m := VERSION_RE.match(info.key.rstrip("/").rsplit("/", 1)[-1]))]
        complete = run_parallel(lambda n: self.store.stat(self.prefix(name, f"v{n}") + MODEL_RECORD) is not None,
                                sorted(numbers), self.jobs)
        return [f"v{n}" for n, ok in zip(sorted(numbers), complete, strict=True) if ok]

    def list(self, name: str | None = None) -> list[ModelVersion]:
        names = [check_model_name(name)] if name else self.names()
        return [self.show(n, v) for n in names for v in self.versions(n)]

    def show(self, name: str, version: str = LATEST) -> ModelVersion:
        check_model_name(name)
        version = normalize_version(version)
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(f"no model named {name!r} in the dataspace; see `hitc model list`")
        if version == LATEST:
            version = versions[-1]
        elif version not in versions:
            raise NotFoundError(f"model {name!r} has no version {version} (its versions: {', '.join(versions)})")
        key = self.prefix(name, version) + MODEL_RECORD
        try:
            data = json.loads(self.store.get_bytes(key))
        except ValueError:
            raise IntegrityError(f"{self.store.uri(key)} is not valid JSON; the model version is damaged") from None
        record = ModelVersion.from_json(data, self.store.uri(key))
        record.uri = self.store.uri(self.prefix(name, version))
        record.artifacts = self._artifacts(name, version)
        record.reports = self._reports(name, version)
        return record

    def _reports(self, name: str, version: str) -> builtins.list[dict[str, Any]]:
        found = []
        for info in self.store.list(self.prefix(name, version) + "eval/", recursive=True):
            if info.key.endswith("/" + REPORT_RECORD):
                found.append(json.loads(self.store.get_bytes(info.key)))
        return sorted(found, key=lambda r: r.get("label", ""))

    def report_file(self, name: str, version: str, label: str, path: str) -> bytes:
        """One file of a stored report (the console serves report.html and its pictures from here)."""
        record = self.show(name, version)
        report = next((r for r in record.reports if r.get("label") == label), None)
        if report is None or path not in {f["path"] for f in report["files"]}:
            raise NotFoundError(f"model {name} {record.version} has no report file {label}/{path}")
        return self.store.get_bytes(self.prefix(name, record.version) + f"eval/{label}/{path}")

    def used_by(self, name: str, type_: str, version: str) -> builtins.list[ModelVersion]:
        """The model versions whose lineage names the dataset version ``name/type_ version``."""
        return [m for m in self.list() if lin.uses_dataset(m.lineage, name, type_, version)]

    def by_job(self, job: str, uid: str | None = None) -> builtins.list[ModelVersion]:
        """The model versions made from a job's outputs (by its uid when both sides know it: names are reused)."""
        def made_by(m: ModelVersion) -> bool:
            recorded = (m.lineage or {}).get("job") or {}
            if uid and recorded.get("uid"):
                return bool(recorded["uid"] == uid)
            return job in (m.source_job, recorded.get("name"))

        return [m for m in self.list() if made_by(m)]

    def _artifacts(self, name: str, version: str) -> builtins.list[dict[str, Any]]:
        found = []
        for info in self.store.list(self.prefix(name, version) + "compiled/", recursive=True):
            if info.key.endswith("/" + ARTIFACT_RECORD):
                found.append(json.loads(self.store.get_bytes(info.key)))
        return found

    def download(self, name: str, version: str, dest: str | Path,
                 with_artifacts: bool = False) -> tuple[ModelVersion, builtins.list[Path]]:
        """Fetch a version's files into ``dest``, each checked against its md5 and sha256."""
        record = self.show(name, version)
        dest = Path(dest).resolve()
        prefix = self.prefix(name, record.version)
        items: list[tuple[str, str, str]] = [(f.path, f.md5, f.sha256) for f in record.files]
        if with_artifacts:
            for artifact in record.artifacts:
                base = f"compiled/{artifact['target']}/"
                items += [(base + f["path"], f["md5"], f["sha256"]) for f in artifact["files"]]

        def fetch(item: tuple[str, str, str]) -> Path:
            rel, md5, sha = item
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest):
                raise IntegrityError(f"the model record names {rel!r}, which would land outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(prefix + rel, target, sha256=sha)
            if _md5_sha256(target)[0] != md5:
                target.unlink()
                raise IntegrityError(f"{self.store.uri(prefix + rel)}: md5 differs from the model record; the "
                                     "stored file is damaged")
            return target

        return record, run_parallel(fetch, items, self.jobs)
