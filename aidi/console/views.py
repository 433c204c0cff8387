"""What the pages show, as plain data (also the JSON API): datasets and their versions, models, jobs by tab,
and a job's detail. Blocking calls (the kubernetes client, the dataspace); the server runs them in threads.

Job states and failure reasons come from ``aidi.cluster.explain`` — the same words `traincli status` prints.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from aidi.cluster import explain, jobs
from aidi.cluster.client import JobClient
from aidi.cluster.kube import api_errors
from aidi.console.identity import Identity
from aidi.dataspace import Dataspace, Manifest, open_dataspace
from aidi.errors import AidiError, NotFoundError
from aidi.jobs import progress as records
from aidi.jobs.lifecycle import parse_time

TABS = ("running", "finished", "failed")


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class VersionRow:
    version: str
    files: int
    size: int
    records: int | None
    uploader: str
    created: str


@dataclass
class DatasetRow:
    name: str
    type: str
    versions: list[VersionRow]

    @property
    def latest(self) -> VersionRow:
        return self.versions[-1]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "latest": self.latest.version,
                "versions": [asdict(v) for v in self.versions]}


def _open(identity: Identity) -> Dataspace:
    if identity.dataspace is None:
        raise NotFoundError(identity.dataspace_problem or "no dataspace is configured")
    return open_dataspace(identity.dataspace, jobs=4)


def _version_row(manifest: Manifest) -> VersionRow:
    return VersionRow(version=manifest.version, files=len(manifest.files), size=manifest.total_size,
                      records=manifest.records, uploader=manifest.uploader, created=manifest.created)


def list_datasets(identity: Identity) -> list[DatasetRow]:
    """Every dataset the team's own account can list (its bucket): the storage decides what a team sees, not the
    manifest's ``uploader``, which a client writes (docs/security.md)."""
    ds = _open(identity)
    try:
        rows = []
        for summary in ds.list_datasets():
            manifests = [ds.resolve(summary.name, summary.type, v) for v in summary.versions]
            mine = [_version_row(m) for m in manifests]
            if mine:
                rows.append(DatasetRow(summary.name, summary.type, mine))
        return rows
    finally:
        ds.close()


def dataset_detail(identity: Identity, name: str, type_: str, version: str | None) -> tuple[DatasetRow, Manifest]:
    """The dataset's versions (this team's) and one version's manifest (default: the latest)."""
    ds = _open(identity)
    try:
        manifests = [ds.resolve(name, type_, v) for v in ds.versions(name, type_)]
        mine = manifests
        if not mine:
            raise NotFoundError(f"no dataset {name}/{type_} in your team's dataspace")
        chosen = next((m for m in mine if m.version == version), None) if version else mine[-1]
        if chosen is None:
            raise NotFoundError(f"dataset {name}/{type_} has no version {version}")
        return DatasetRow(name, type_, [_version_row(m) for m in mine]), chosen
    finally:
        ds.close()


def models_trained_on(identity: Identity, name: str, type_: str, version: str) -> list[dict[str, Any]]:
    """The team's model versions whose lineage names this dataset version (`hitc dataspace show --used-by`)."""
    from aidi.dataspace.registry import ModelRegistry

    ds = _open(identity)
    try:
        return [m.to_json() for m in ModelRegistry(ds.store).used_by(name, type_, version)
                if _model_visible(identity, m.uploader)]
    except AidiError:
        return []   # lineage is a help: the dataset page shows without it
    finally:
        ds.close()


# --------------------------------------------------------------------------------------------- models


def _model_visible(identity: Identity, uploader: str) -> bool:
    """Whether the team sees a model version: the one place the model pages decide it. Where the team's own
    dataspace account scopes what it can list (an Identity without ``uploader``), the storage decides: all."""
    mine = getattr(identity, "uploader", None)
    return mine is None or uploader == mine


def list_models(identity: Identity) -> list[dict[str, Any]]:
    from aidi.dataspace.registry import ModelRegistry

    ds = _open(identity)
    try:
        from aidi.dataspace.registry import metric_columns

        registry = ModelRegistry(ds.store)
        mine = [r for r in registry.list() if _model_visible(identity, r.uploader)]
        columns, values = metric_columns(mine)
        out = []
        for record, row in zip(mine, values, strict=True):
            data = record.to_json()
            data["size"] = sum(f.size for f in record.files)
            # The comparison: one figure per metric column (mAP per scene, mIoU), None where this version has none.
            data["compare"] = {columns[key]: value for key, value in zip(columns, row, strict=True)}
            out.append(data)
        return out
    finally:
        ds.close()


# ----------------------------------------------------------------------------------------------- jobs


def duration_seconds(start: str | None, end: str | None, now: datetime.datetime | None = None) -> int | None:
    began = parse_time(start)
    if began is None:
        return None
    ended = parse_time(end) or now or datetime.datetime.now(datetime.UTC)
    return max(0, int((ended - began).total_seconds()))


def tab_of(job: dict[str, Any]) -> str:
    """running (Pending, Running, Suspended, Restarting), finished (Succeeded), failed (Failed, cancelled)."""
    phase = jobs.phase_of(job)
    if phase == "Succeeded":
        return "finished"
    if phase == "Failed" or jobs.is_cancelled(job):
        return "failed"
    return "running"


@dataclass
class JobRow:
    name: str
    phase: str
    tab: str
    reason: str | None
    gpus_per_worker: int
    workers: str
    priority: int
    start: str | None
    duration: int | None
    project: str | None
    step: str | None = None   # status.progress, as `kubectl get trainjobs` shows it
    eta: str | None = None


def job_row(job: dict[str, Any]) -> JobRow:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    workers = status.get("workers") or {}
    return JobRow(
        name=job["metadata"]["name"], phase="Cancelled" if jobs.is_cancelled(job) else jobs.phase_of(job),
        tab=tab_of(job), reason=status.get("reason"), gpus_per_worker=int(spec.get("gpusPerWorker", 1)),
        workers=f"{workers.get('active', 0)}/{(spec.get('workers') or {}).get('max', 1)}",
        priority=int(spec.get("priority", 3)), start=status.get("startTime"),
        duration=duration_seconds(status.get("startTime"), status.get("completionTime")),
        project=spec.get("projectId"), step=(status.get("progress") or {}).get("step"),
        eta=(status.get("progress") or {}).get("eta"),
    )


def list_jobs(identity: Identity) -> list[JobRow]:
    rows = [job_row(j) for j in identity.jobs().list_jobs()]
    # Newest first, the way people look for the job they just submitted; unstarted jobs on top.
    return sorted(rows, key=lambda r: r.start or "9999", reverse=True)


@dataclass
class JobDetail:
    row: JobRow
    report: explain.JobReport
    inputs: list[dict[str, Any]]
    output: dict[str, Any] | None
    outputs: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    log_pod: str | None = None
    log_tail: str | None = None
    log_note: str | None = None
    image: str | None = None
    # From the trainer's progress records (docs/progress.md): where it stands, and the curves' series.
    progress: dict[str, Any] | None = None
    curves: records.Curves | None = None
    progress_source: str | None = None  # "log" (worker 0, live) or the dataspace URI of the synced file
    # Lineage: the versions the job really fetched (its job record), the model versions made from its outputs.
    fetched: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["report"] = self.report.to_json()
        data["curves"] = self.curves.to_json() if self.curves is not None else None
        return data


def job_detail(identity: Identity, name: str, tail_lines: int) -> JobDetail:
    client = identity.jobs()
    job = client.get_job(name)
    pods = client.job_pods(name)
    spec, status = job.get("spec") or {}, job.get("status") or {}
    data_space = spec.get("dataSpace") or {}
    live = jobs.progress_records(client, name, pods)
    detail = JobDetail(row=job_row(job), report=explain.report(job, pods, live),
                       inputs=list(data_space.get("inputs") or []),
                       output=data_space.get("output"), outputs=dict(status.get("outputs") or {}),
                       events=_events(client, name, {p["metadata"]["name"] for p in pods}), image=spec.get("image"))
    _log_tail(client, job, pods, tail_lines, detail)
    found, detail.progress_source = live, "log" if live else None
    if detail.outputs.get("dataset") and identity.dataspace is not None:
        stored = _from_outputs(identity, detail, job)
        if len(stored) > len(found):  # the pod is gone, or restarted: the synced file holds the whole history
            found = stored
    summary = records.summarize(found)
    detail.progress = summary.to_json() if summary is not None else detail.report.progress
    detail.curves = records.curves(found) if found else None
    return detail


def _from_outputs(identity: Identity, detail: JobDetail, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The progress file and the job record synced with the job's outputs; the model versions made from them."""
    from aidi.dataspace.lineage import JOB_RECORD, parse_job_record
    from aidi.dataspace.registry import ModelRegistry

    out = detail.outputs
    try:
        ds = _open(identity)
    except AidiError:
        return []
    try:
        type_ = out.get("type") or "dataset"
        version = out.get("version") or _output_version(ds, out["dataset"], type_, job)
        if version is None:
            return []
        detail.outputs["version"] = version
        prefix = ds.version_prefix(out["dataset"], type_, version)
        found: list[dict[str, Any]] = []
        try:
            found = records.parse_jsonl(ds.store.get_bytes(prefix + records.FILE_NAME).decode("utf-8", "replace"))
            detail.progress_source = ds.store.uri(prefix + records.FILE_NAME)
        except NotFoundError:
            pass
        with contextlib.suppress(AidiError):  # outputs of a job without inputs carry no job record
            detail.fetched = list(parse_job_record(ds.store.get_bytes(prefix + JOB_RECORD), JOB_RECORD)["inputs"])
        uid = job["metadata"].get("uid")
        detail.models = [m.to_json() for m in ModelRegistry(ds.store).by_job(job["metadata"]["name"], uid)
                         if _model_visible(identity, m.uploader)]
        return found
    except AidiError:
        return []   # lineage and curves are a help: the job page shows without them
    finally:
        ds.close()


OUTPUT_VERSIONS_SEARCHED = 20


def _output_version(ds: Dataspace, name: str, type_: str, job: dict[str, Any]) -> str | None:
    """The output version this job made: the newest whose job record names it (by uid; the operator cannot
    know the number the sync step got). Only the last few versions are looked at: a job's are recent."""
    from aidi.dataspace.lineage import JOB_RECORD, parse_job_record

    meta = job["metadata"]
    for version in reversed(ds.versions(name, type_)[-OUTPUT_VERSIONS_SEARCHED:]):
        try:
            record = parse_job_record(ds.store.get_bytes(ds.version_prefix(name, type_, version) + JOB_RECORD),
                                      JOB_RECORD)
        except AidiError:
            continue
        recorded = record.get("job") or {}
        if (recorded.get("uid") and recorded["uid"] == meta.get("uid")) or (
                not recorded.get("uid") and recorded.get("name") == meta.get("name")):
            return version
    return None


@dataclass
class ModelDetail:
    record: dict[str, Any]
    size: int


def model_detail(identity: Identity, name: str, version: str) -> ModelDetail:
    from aidi.dataspace.registry import ModelRegistry

    ds = _open(identity)
    try:
        record = ModelRegistry(ds.store).show(name, version)
        if not _model_visible(identity, record.uploader):
            raise NotFoundError(f"no model {name} {version} in your team's dataspace")
        data = record.to_json()
        data["all_metrics"] = record.all_metrics()
        return ModelDetail(record=data, size=sum(f.size for f in record.files))
    finally:
        ds.close()


def model_report_file(identity: Identity, name: str, version: str, label: str, path: str) -> bytes:
    """One file of a report stored with a model version (report.html, its pictures), read with the user's rights."""
    from aidi.dataspace.registry import ModelRegistry

    model_detail(identity, name, version)  # the team check
    ds = _open(identity)
    try:
        return ModelRegistry(ds.store).report_file(name, version, label, path)
    finally:
        ds.close()


def _events(client: JobClient, job: str, pods: set[str]) -> list[dict[str, Any]]:
    """The job's and its pods' events, newest last (filtered here: test servers ignore field selectors)."""
    core = getattr(client, "core", None)
    if core is None:
        return []   # the local runner has no events
    try:
        with api_errors(f"list events in {client.namespace}"):
            found = core.list_namespaced_event(client.namespace)
    except AidiError:
        return []   # events are a help, not the page: a Role without them still shows the job
    wanted = pods | {job}
    out = []
    for event in found.items:
        obj = event.involved_object
        if obj is None or obj.name not in wanted:
            continue
        when = event.last_timestamp or event.event_time or event.first_timestamp
        out.append({"object": f"{(obj.kind or '').lower()}/{obj.name}", "type": event.type, "reason": event.reason,
                    "message": event.message, "count": event.count or 1, "time": when.isoformat() if when else None})
    return sorted(out, key=lambda e: e["time"] or "")


def _log_tail(client: JobClient, job: dict[str, Any], pods: list[dict[str, Any]], tail: int,
              detail: JobDetail) -> None:
    name = job["metadata"]["name"]
    try:
        pod = jobs.pick_pod(pods, name, 0)
    except (NotFoundError, AidiError):
        kept = jobs.kept_log_tail(job, name, 0)
        if kept is not None:
            detail.log_pod, detail.log_tail = f"{name}-worker-0", kept
            detail.log_note = "kept"
        return
    detail.log_pod = pod["metadata"]["name"]
    try:
        detail.log_tail = client.pod_log(detail.log_pod, jobs.default_container(pod), tail=tail)
    except AidiError as exc:
        detail.log_note = str(exc)
