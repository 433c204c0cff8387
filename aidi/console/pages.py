"""Server-rendered HTML: one function per page, plain markup, every value escaped. No external assets: the
CSS and the small auto-refresh script are served by the console itself (it must work offline in a cluster).

A page's changing part sits in ``<div id="live">``; the script re-fetches the page with the header
``X-Console-Fragment: live`` and the server answers with that part only (``fragment=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from aidi.console import charts
from aidi.console.appkeys import AppKey
from aidi.console.i18n import text
from aidi.console.views import TABS, DatasetRow, JobDetail, JobRow, ModelDetail
from aidi.dataspace import Manifest
from aidi.jobs.codepkg import human_bytes


def h(value: object) -> str:
    return "" if value is None else escape(str(value), quote=True)


def u(value: str) -> str:
    return quote(value, safe="")


@dataclass
class Page:
    """What every page needs around its body."""

    lang: str
    path: str
    namespace: str | None = None
    user: str | None = None
    csrf: str | None = None
    refresh_seconds: float = 5.0

    def t(self, key: str, **values: object) -> str:
        return text(key, self.lang, **values)


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def when(value: str | None) -> str:
    return h(value.replace("T", " ").replace("Z", " UTC")) if value else "-"


def layout(page: Page, title: str, body: str, nav: str = "") -> str:
    other = "en" if page.lang == "zh" else "zh"
    path, _, query = page.path.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query) if k != "lang"]
    switch = f"{path}?{urlencode([*kept, ('lang', other)])}"
    who = ""
    if page.namespace is not None:
        who = (f'<div class="who"><span id="who-team">{h(page.namespace)}</span> · <span>{h(page.user)}</span> '
               f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
               f'value="{h(page.csrf)}"><button type="submit" id="logout">{page.t("logout")}</button></form></div>')

    def link(href: str, key: str) -> str:
        current = ' class="current"' if nav == key else ""
        return f'<a href="{href}" id="nav-{key}"{current}>{page.t(key)}</a>'

    menu = ""
    if page.namespace is not None:
        menu = (f'<nav><span class="group">{page.t("data")}</span>{link("/datasets", "datasets")}'
                f'{link("/models", "models")}<span class="group">{page.t("tasks")}</span>{link("/jobs", "jobs")}'
                f'<span class="group"></span>{link("/personal", "personal")}</nav>')
    return (f'<!doctype html>\n<html lang="{"zh-CN" if page.lang == "zh" else "en"}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{h(title)} · {page.t("title")}</title><link rel="stylesheet" href="/static/console.css">'
            f'<script src="/static/console.js" defer></script></head><body>'
            f'<header><a class="brand" href="/jobs">{page.t("title")}</a>{menu}<div class="side">'
            f'<a id="lang" href="{h(switch)}">{page.t("language")}</a>{who}</div></header>'
            f'<main><h1>{h(title)}</h1>{body}</main></body></html>')


def table(headers: list[str], rows: list[list[str]], empty: str, table_id: str = "") -> str:
    if not rows:
        return f'<p class="empty">{h(empty)}</p>'
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def notice(message: str | None, kind: str = "error") -> str:
    return f'<p class="notice {kind}">{h(message)}</p>' if message else ""


# --------------------------------------------------------------------------------------------- login


def login(page: Page, mode: str, next_url: str, error: str | None = None, status: str | None = None) -> str:
    helptext = page.t("login_help_local" if mode == "local" else "login_help_cluster")
    body = (f'{notice(status, "info")}{notice(error)}<form method="post" action="/login" class="card login">'
            f'<p>{h(helptext)}</p><input type="hidden" name="next" value="{h(next_url)}">'
            f'<label>{page.t("token")} <input type="password" name="token" id="token" autocomplete="off" '
            f'required autofocus></label><button type="submit" id="login">{page.t("login")}</button></form>')
    return layout(page, page.t("login_title"), body)


def unauthorized(page: Page) -> str:
    return layout(page, page.t("unauthorized"),
                  f'<p><a id="to-login" href="/login?next={u(page.path)}">{page.t("login")}</a></p>')


def error(page: Page, status: int, message: str) -> str:
    title = page.t("not_found") if status == 404 else page.t("error")
    return layout(page, f"{status} {title}", notice(message))


# ------------------------------------------------------------------------------------------- datasets


def datasets(page: Page, rows: list[DatasetRow], problem: str | None) -> str:
    cells = [[f'<a href="/datasets/{u(r.name)}/{u(r.type)}">{h(r.name)}</a>', h(r.type), h(r.latest.version),
              h(len(r.versions)), h(r.latest.files), h(human_bytes(r.latest.size)),
              h(r.latest.records if r.latest.records is not None else "-"), h(r.latest.uploader),
              when(r.latest.created)] for r in rows]
    headers = [page.t(k) for k in ("name", "type", "latest", "versions", "files", "size", "records", "uploader",
                                   "created")]
    return layout(page, page.t("datasets"),
                  notice(problem) + table(headers, cells, page.t("no_datasets"), "datasets"), "datasets")


def dataset(page: Page, row: DatasetRow, manifest: Manifest, used_by: list[dict[str, Any]] | None = None) -> str:
    base = f"/datasets/{u(row.name)}/{u(row.type)}"
    versions = [[f'<a href="{base}?version={u(v.version)}">{h(v.version)}</a>'
                 + (" ◀" if v.version == manifest.version else ""), h(v.files), h(human_bytes(v.size)),
                 h(v.records if v.records is not None else "-"), h(v.uploader), when(v.created)]
                for v in reversed(row.versions)]
    files = [[h(f.path), h(human_bytes(f.size)), h(f.records if f.records is not None else "-"),
              f'<code title="{h(f.sha256)}">{h(f.sha256[:12])}…</code>'] for f in manifest.files]
    body = (f'<p><a href="/datasets">← {page.t("datasets")}</a></p>'
            f'<p class="meta">{page.t("type")}: <b>{h(row.type)}</b></p>'
            f'<h2>{page.t("versions")}</h2>'
            + table([page.t(k) for k in ("version", "files", "size", "records", "uploader", "created")], versions,
                    "", "versions")
            + f'<h2>{page.t("files")} — {h(manifest.version)}</h2>'
            + table([page.t("file"), page.t("size"), page.t("records"), "sha256"], files, "", "files")
            + f'<h2>{page.t("used_by")} — {h(manifest.version)}</h2>'
            + table([page.t("models"), page.t("source_job"), page.t("created")],
                    [[f'<a href="{model_href(m["name"], m["version"])}">{h(m["name"])} {h(m["version"])}</a>',
                      f'<a href="/jobs/{u(m["source_job"])}">{h(m["source_job"])}</a>' if m.get("source_job") else "-",
                      when(m["created"])] for m in used_by or []], page.t("no_used_by"), "used-by"))
    return layout(page, f"{row.name} / {row.type}", body, "datasets")


def _figure(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.4g}"


def model_href(name: str, version: str) -> str:
    return f"/models/{u(name)}/{u(version)}"


def models(page: Page, rows: list[dict[str, Any]], problem: str | None) -> str:
    """Every version side by side: one column per metric (mAP per scene, mIoU), the size; the best of each column
    marked, so choosing the one to release is a glance."""
    columns = list(rows[0]["compare"]) if rows else []
    best = {c: max((r["compare"][c] for r in rows if r["compare"].get(c) is not None), default=None)
            for c in columns}
    cells = []
    for m in rows:
        figures = [(f'<b class="best">{_figure(m["compare"][c])}</b>' if m["compare"][c] is not None
                    and m["compare"][c] == best[c] and len(rows) > 1 else _figure(m["compare"][c])) for c in columns]
        job = m.get("source_job")
        cells.append([f'<a href="{model_href(m["name"], m["version"])}">{h(m["name"])}</a>',
                      f'<a href="{model_href(m["name"], m["version"])}">{h(m["version"])}</a>', *figures,
                      h(human_bytes(m["size"])), f'<a href="/jobs/{u(job)}">{h(job)}</a>' if job else "-",
                      h(len(m.get("reports") or [])), h(m["uploader"]), when(m["created"])])
    headers = [page.t("name"), page.t("version"), *columns, page.t("size"), page.t("source_job"), page.t("reports"),
               page.t("uploader"), page.t("created")]
    hint = f'<p class="hint">{page.t("compare_hint")}</p>' if columns else ""
    return layout(page, page.t("models"),
                  notice(problem) + hint + table(headers, cells, page.t("no_models"), "models"), "models")


def lineage_html(page: Page, lineage: dict[str, Any] | None) -> str:
    """job → datasets → output → this model, each a link."""
    if not lineage:
        return f'<p class="empty">{page.t("no_lineage")}</p>'
    job = lineage.get("job") or {}
    items = [f'<li>{page.t("trained_by")}: <a href="/jobs/{u(job.get("name") or "")}" id="lineage-job">'
             f'{h(job.get("name"))}</a> <span class="meta">({page.t("team")} {h(job.get("namespace"))}, uid '
             f'<code>{h(job.get("uid"))}</code>, {page.t("image")} <code>{h(job.get("image"))}</code>, '
             f'{page.t("code_package")} sha256 <code title="{h(job.get("code_sha256"))}">'
             f'{h((job.get("code_sha256") or "")[:12])}…</code>)</span></li>']
    for d in lineage.get("datasets") or []:
        asked = (f' <span class="meta">({page.t("asked_for")} {h(d["requested"])})</span>'
                 if d.get("requested") and d.get("requested") != d.get("version") else "")
        items.append(f'<li>{page.t("trained_on")}: {_dataset_link(d, "trainset")}{asked}</li>')
    if lineage.get("output"):
        items.append(f'<li>{page.t("from_output")}: {_dataset_link(lineage["output"], "dataset")}</li>')
    return f'<ul class="lineage" id="lineage">{"".join(items)}</ul>'


def report_href(name: str, version: str, label: str, path: str = "report.html") -> str:
    return f"{model_href(name, version)}/eval/{u(label)}/{quote(path)}"


def model(page: Page, d: ModelDetail) -> str:
    r = d.record
    name, version = r["name"], r["version"]
    summary = [(page.t("version"), h(version)), (page.t("created"), when(r["created"])),
               (page.t("uploader"), h(r["uploader"])), (page.t("size"), h(human_bytes(d.size))),
               (page.t("source_job"), f'<a href="/jobs/{u(r["source_job"])}">{h(r["source_job"])}</a>'
                if r.get("source_job") else "-"),
               (page.t("source"), h(r.get("source"))), (page.t("description"), h(r.get("description")))]
    dl = "".join(f"<dt>{k}</dt><dd>{v or '-'}</dd>" for k, v in summary)
    metrics = []
    for label, value in (r.get("all_metrics") or {}).items():
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            figures = ", ".join(f"{h(k)} {_figure(v)}" for k, v in shown.items())
            metrics.append([h(label), h(value.get("task")), figures])
        else:
            metrics.append([h(label), "", _figure(value)])
    reports = [[h(rep["label"]), when(rep["created"]),
                ", ".join(f"{k} {_figure(v)}" for k, v in rep["summary"].items()
                          if k in ("map_all_point", "miou", "recall", "precision")),
                f'<a class="report" href="{report_href(name, version, rep["label"])}" target="_blank" '
                f'rel="noopener">report.html</a>' if rep.get("report") else "-"] for rep in r.get("reports") or []]
    files = [[h(f["path"]), h(human_bytes(f["size"])), f'<code>{h(f["md5"])}</code>'] for f in r["files"]]
    compiled = [[h(a["target"]), when(a["created"]), h(", ".join(f["path"] for f in a["files"]))]
                for a in r.get("artifacts") or []]
    body = (f'<p><a href="/models">← {page.t("models")}</a></p><dl class="summary" id="summary">{dl}</dl>'
            f'<h2>{page.t("lineage")}</h2>{lineage_html(page, r.get("lineage"))}'
            f'<h2>{page.t("metrics")}</h2>'
            + table([page.t("name"), page.t("type"), page.t("metrics")], metrics, "-", "metrics")
            + f'<h2>{page.t("reports")}</h2>'
            + table([page.t("name"), page.t("created"), page.t("metrics"), ""], reports, page.t("no_reports"),
                    "reports")
            + f'<h2>{page.t("files")}</h2>' + table([page.t("file"), page.t("size"), "md5"], files, "-", "files")
            + (f'<h2>{page.t("compiled")}</h2>' + table(["target", page.t("created"), page.t("files")], compiled, "-",
                                                         "compiled") if compiled else ""))
    return layout(page, f"{name} {version}", body, "models")


# ----------------------------------------------------------------------------------------------- jobs


def phase_badge(page: Page, phase: str) -> str:
    return f'<span class="phase {h(phase.lower())}">{h(page.t("phase." + phase))}</span>'


def live(page: Page, inner: str) -> str:
    return (f'<div id="live" data-refresh="{page.refresh_seconds:g}">{inner}</div>'
            f'<p class="hint">{page.t("auto_refresh", n=f"{page.refresh_seconds:g}")}</p>')


def jobs_fragment(page: Page, rows: list[JobRow], tab: str, problem: str | None) -> str:
    counts = {t: sum(1 for r in rows if r.tab == t) for t in TABS}
    tabs = "".join(f'<a href="/jobs?tab={t}" id="tab-{t}" class="tab{" current" if t == tab else ""}">'
                   f'{page.t(t)} <span class="count">{counts[t]}</span></a>' for t in TABS)
    cells = [[f'<a href="/jobs/{u(r.name)}">{h(r.name)}</a>', phase_badge(page, r.phase), h(r.step or "-"),
              h(r.eta or "-"), h(r.gpus_per_worker), h(r.workers), when(r.start), h(duration(r.duration)),
              h(r.priority), h(r.project), h(r.reason)] for r in rows if r.tab == tab]
    headers = [page.t(k) for k in ("name", "phase", "step", "eta_job", "gpus", "workers", "start", "duration",
                                   "priority", "project", "reason")]
    return (f'<div class="tabs">{tabs}</div>' + notice(problem)
            + table(headers, cells, page.t("no_jobs"), "jobs"))


def jobs_page(page: Page, fragment: str) -> str:
    return layout(page, page.t("jobs"), live(page, fragment), "jobs")


def _dataset_link(ref: dict[str, Any], default_type: str) -> str:
    name, type_ = ref.get("name", ""), ref.get("type") or default_type
    version = ref.get("version")
    query = f"?version={u(version)}" if version and version != "latest" else ""
    label = f"{name}/{type_}" + (f"@{version}" if version else "")
    return f'<a href="/datasets/{u(name)}/{u(type_)}{query}">{h(label)}</a>'


def progress_html(page: Page, d: JobDetail) -> str:
    """Where training stands and the curves (docs/progress.md); empty before the trainer's first record."""
    p = d.progress
    if not p:
        return ""
    if "status" in p:  # only the runner's summary: the log and the synced file are not readable
        st = p["status"]
        rows = [(page.t("step"), h(st.get("step"))), (page.t("epoch"), h(st.get("epoch"))),
                (page.t("iteration"), h(st.get("iteration"))), (page.t("eta_job"), h(st.get("eta"))),
                (page.t("loss"), _figure(st.get("loss")))]
        dl = "".join(f"<dt>{k}</dt><dd>{v or '-'}</dd>" for k, v in rows)
        return f'<h2>{page.t("progress")}</h2><dl class="summary" id="progress">{dl}</dl>'
    done = p.get("state") == "done"
    step = f'{h(p.get("step_label"))} — {page.t("step." + str(p.get("step_name")))}' if p.get("step_label") else "-"
    if done:
        step += f' <span class="phase succeeded">{page.t("all_steps_done")}</span>'
    rows = [(page.t("step"), step)]
    if not done and p.get("epoch") is not None:
        iters = p.get("iterations") or 0
        pct = 100 * (p.get("iteration") or 0) // iters if iters else 0
        rows += [(page.t("epoch"), f'{h(p["epoch"])} / {h(p["epochs"])}'),
                 (page.t("iteration"), f'{h(p["iteration"])} / {h(p["iterations"])} '
                  f'<progress id="step-bar" max="100" value="{pct}">{pct}%</progress>'),
                 (page.t("samples_per_sec"), _figure(p.get("samples_per_sec"))),
                 (page.t("eta_step"), h(p.get("eta_step"))), (page.t("eta_job"), h(p.get("eta_job")))]
    rows += [(page.t("loss"), _figure(p.get("loss"))), (page.t("updated"), when(p.get("updated")))]
    dl = "".join(f"<dt>{k}</dt><dd>{v or '-'}</dd>" for k, v in rows)
    branches = sorted(set(p.get("branches") or {}) | set(p.get("val") or {}))
    terms = p.get("terms") or {}
    cells = [[h(b), _figure((p.get("branches") or {}).get(b)),
              ", ".join(f"{h(k.split('.', 1)[1])} {_figure(v)}" for k, v in terms.items() if k.startswith(b + ".")),
              ", ".join(f"{h(k)} {_figure(v)}" for k, v in ((p.get("val") or {}).get(b) or {}).items()
                        if k in ("precision", "recall", "miou"))] for b in branches]
    out = (f'<h2>{page.t("progress")}</h2><dl class="summary" id="progress">{dl}</dl>'
           + table([page.t("branch"), page.t("loss"), page.t("loss_terms"), page.t("validation")], cells, "-",
                   "branches"))
    if d.curves is not None and not d.curves.empty:
        out += f'<h2>{page.t("curves")}</h2><div class="charts">{curves_html(page, d)}</div>'
        if d.progress_source and d.progress_source != "log":
            out += f'<p class="hint">{page.t("curves_from")} <code>{h(d.progress_source)}</code></p>'
    return out


def curves_html(page: Page, d: JobDetail) -> str:
    assert d.curves is not None
    c = d.curves
    colour = charts.colours(sorted(set(c.loss) | set(c.val)))
    # Short labels: the steps' full names would overlap where a step is short; the table above names them.
    markers = [(float(x), f'{page.t("step")} {i + 1}') for i, (x, _) in enumerate(c.steps)]
    x_label = page.t("iterations_axis")
    loss = charts.Chart(page.t("chart_loss"), [charts.Series(b, [(float(x), y) for x, y in pts], colour[b])
                                              for b, pts in sorted(c.loss.items())], "chart-loss", markers,
                        x_label=x_label)
    det = [charts.Series(f"{b} {page.t(name)}", [(float(x), y) for x, y in figs[name]], colour[b], name == "recall")
           for b, figs in sorted(c.val.items()) for name in ("precision", "recall") if name in figs]
    seg = [charts.Series(f"{b} mIoU", [(float(x), y) for x, y in figs["miou"]], colour[b])
           for b, figs in sorted(c.val.items()) if "miou" in figs]
    empty = page.t("no_validation_yet")
    return (charts.render(loss, page.t("no_progress"))
            + charts.render(charts.Chart(page.t("chart_det"), det, "chart-det", markers, 0.0, 1.0, x_label), empty)
            + charts.render(charts.Chart(page.t("chart_seg"), seg, "chart-seg", markers, 0.0, 1.0, x_label), empty))


def job_lineage_html(page: Page, d: JobDetail) -> str:
    """The job's place in the chain: datasets it fetched (exact versions) → its output → the models made from it."""
    if not d.fetched and not d.models:
        return ""
    fetched = ", ".join(_dataset_link(f, "trainset") + (f' <span class="meta">({page.t("asked_for")} '
                                                       f'{h(f["requested"])})</span>' if f.get("requested")
                                                       and f.get("requested") != f.get("version") else "")
                        for f in d.fetched) or "-"
    rows = []
    for m in d.models:
        reports = " ".join(f'<a class="report" href="{report_href(m["name"], m["version"], r["label"])}" '
                           f'target="_blank" rel="noopener">{h(r["label"])}</a>' for r in m.get("reports") or []
                           if r.get("report"))
        rows.append([f'<a href="{model_href(m["name"], m["version"])}">{h(m["name"])} {h(m["version"])}</a>',
                     when(m["created"]), reports or "-"])
    return (f'<h2>{page.t("lineage")}</h2><dl class="summary" id="job-lineage"><dt>{page.t("fetched")}</dt>'
            f'<dd>{fetched}</dd></dl>'
            + table([page.t("models"), page.t("created"), page.t("reports")], rows, page.t("no_models_from_job"),
                    "job-models"))


def job_fragment(page: Page, d: JobDetail) -> str:
    rep, row = d.report, d.row
    summary = [
        (page.t("phase"), phase_badge(page, row.phase) + (f" — {h(rep.reason)}" if rep.reason else "")),
        (page.t("message"), h(rep.message)), (page.t("why"), h(rep.explanation)),
        (page.t("gpus"), h(row.gpus_per_worker)), (page.t("workers"), h(row.workers)),
        (page.t("priority"), h(row.priority)), (page.t("start"), when(row.start)),
        (page.t("duration"), h(duration(row.duration))), (page.t("restarts"), h(rep.restarts)),
        (page.t("image"), h(d.image)),
        (page.t("inputs"), ", ".join(_dataset_link(i, "trainset") for i in d.inputs) or "-"),
        (page.t("output"), (_dataset_link({**d.output, "version": d.outputs.get("version")}, "dataset")
                            if d.output else "-")),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v or '-'}</dd>" for k, v in summary)
    conditions = [[h(c.get("type")), h(c.get("status")), h(c.get("reason")), h(c.get("message")),
                   when(c.get("lastTransitionTime"))] for c in rep.conditions]
    pods = [[h(p.name), h(p.role), phase_badge(page, p.phase), h(p.ready), h(p.restarts), h(p.node),
             h(" ".join(x for x in (p.reason, p.message) if x)), h(p.explanation)] for p in rep.pods]
    events = [[when(e["time"]), h(e["type"]), h(e["object"]), h(e["reason"]), h(e["message"]), h(e["count"])]
              for e in d.events]
    log = f'<p class="empty">{page.t("no_log")}</p>'
    if d.log_tail:
        note = f'<p class="hint">{page.t("log_kept")}</p>' if d.log_note == "kept" else ""
        log = f'{note}<pre id="log">{h(d.log_tail)}</pre>'
    elif d.log_note:
        log = notice(d.log_note, "info")
    return (f'<dl class="summary" id="summary">{dl}</dl>'
            + progress_html(page, d) + job_lineage_html(page, d)
            + f'<h2>{page.t("conditions")}</h2>'
            + table([page.t(k) for k in ("type", "status", "reason", "message", "since")], conditions, "-",
                    "conditions")
            + f'<h2>{page.t("pods")}</h2>'
            + table([page.t(k) for k in ("name", "role", "phase", "ready", "restarts", "node", "reason", "why")],
                    pods, "-", "pods")
            + f'<h2>{page.t("events")}</h2>'
            + table([page.t("time"), page.t("type"), page.t("object"), page.t("reason"), page.t("message"), "#"],
                    events, "-", "events")
            + f'<h2>{page.t("log_tail")}{" — " + h(d.log_pod) if d.log_pod else ""}</h2>{log}')


def job_page(page: Page, name: str, fragment: str) -> str:
    body = f'<p><a href="/jobs">← {page.t("jobs")}</a></p>' + live(page, fragment)
    return layout(page, name, body, "jobs")


# ------------------------------------------------------------------------------------------ personal


@dataclass
class PersonalView:
    namespace: str
    queue: str | None
    user: str
    dataspace_endpoint: str | None
    dataspace_bucket: str | None
    dataspace_access_key: str | None
    dataspace_problem: str | None
    appkeys_enabled: bool
    keys: list[AppKey]
    keys_problem: str | None = None
    new_key_snippet: str | None = None
    new_key_token: str | None = None
    flash: str | None = None
    has_ca: bool = False
    dataspace_token: str | None = None   # ACCESS_KEY:SECRET_KEY, only in the answer to an explicit request


def personal(page: Page, v: PersonalView) -> str:
    csrf = f'<input type="hidden" name="csrf" value="{h(page.csrf)}">'
    parts = [notice(v.flash, "info"),
             f'<dl class="summary"><dt>{page.t("team")}</dt><dd id="namespace">{h(v.namespace)}'
             f'{"/" + h(v.queue) if v.queue else ""}</dd><dt>{page.t("user")}</dt><dd>{h(v.user)}</dd></dl>',
             f'<h2>{page.t("dataspace_token")}</h2>']
    if v.dataspace_access_key is not None:
        command = "hitc init -t - " + (f"--endpoint {v.dataspace_endpoint} " if v.dataspace_endpoint else "") + \
                  (f"--bucket {v.dataspace_bucket}" if v.dataspace_bucket else "")
        card = (f'<dl class="summary"><dt>{page.t("access_key")}</dt><dd id="dataspace-access-key">'
                f'{h(v.dataspace_access_key)}</dd><dt>{page.t("bucket")}</dt><dd>{h(v.dataspace_bucket or "-")}</dd>'
                f'</dl>')
        if v.dataspace_token is not None:
            card += f'<p><code class="secret" id="dataspace-token">{h(v.dataspace_token)}</code></p>'
        else:
            # The secret key is never part of a page that merely loads: a POST (with the form's CSRF token) asks.
            card += (f'<form method="post" action="/personal/dataspace-token" class="inline">{csrf}'
                     f'<button type="submit" id="reveal-dataspace-token">{page.t("reveal_secret")}</button></form>'
                     f'<p class="hint">{page.t("reveal_help")}</p>')
        parts.append(f'<div class="card">{card}<pre>{h(command.strip())}   # paste the token</pre></div>')
    else:
        parts.append(notice(v.dataspace_problem or "-", "info"))
    parts.append(f'<h2>{page.t("cluster_config")}</h2>')
    if not v.appkeys_enabled:
        parts.append(notice(page.t("appkeys_off"), "info"))
        return layout(page, page.t("personal"), "".join(parts), "personal")
    parts.append(f'<p class="hint">{page.t("appkey_help")}</p>')
    if v.new_key_snippet:
        parts.append(f'<div class="card new-key"><h3>{page.t("new_appkey")}</h3>'
                     f'<pre id="appkey-snippet">{h(v.new_key_snippet)}</pre>'
                     f'<p>traincli init -t - … : <code id="appkey-token">{h(v.new_key_token)}</code></p></div>')
    if v.has_ca:
        parts.append(f'<p><a href="/personal/ca.crt" id="ca">{page.t("download_ca")}</a></p>')
    parts.append(f'<form method="post" action="/personal/appkeys" class="card inline-form">{csrf}'
                 f'<label>{page.t("queue")} <input name="queue" id="queue" pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?">'
                 f'</label><label>{page.t("description")} <input name="description" id="description" maxlength="200">'
                 f'</label><button type="submit" id="create-appkey">{page.t("create_appkey")}</button></form>')
    parts.append(notice(v.keys_problem))
    rows = [[f'<code>{h(k.id)}</code>', h(k.appid), h(k.created_by), h(k.description), when(k.created),
             when(k.expires),
             f'<form method="post" action="/personal/appkeys/{u(k.id)}/revoke" class="inline">{csrf}'
             f'<button type="submit" class="danger" id="revoke-{h(k.id)}">{page.t("revoke")}</button></form>']
            for k in v.keys]
    parts.append(table(["ID", "APPID", page.t("created_by"), page.t("description"), page.t("created"),
                        page.t("expires"), ""], rows, page.t("no_appkeys"), "appkeys"))
    return layout(page, page.t("personal"), "".join(parts), "personal")
