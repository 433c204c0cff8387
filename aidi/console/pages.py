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

from aidi.console.appkeys import AppKey
from aidi.console.i18n import text
from aidi.console.views import TABS, DatasetRow, JobDetail, JobRow
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


def dataset(page: Page, row: DatasetRow, manifest: Manifest) -> str:
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
            + table([page.t("file"), page.t("size"), page.t("records"), "sha256"], files, "", "files"))
    return layout(page, f"{row.name} / {row.type}", body, "datasets")


def models(page: Page, rows: list[dict[str, Any]], problem: str | None) -> str:
    cells = [[h(m["name"]), h(m["version"]), h(len(m["files"])), h(human_bytes(m["size"])), h(m.get("source_job")),
              h(", ".join(f"{k}={v}" for k, v in (m.get("metrics") or {}).items())), h(m["uploader"]),
              when(m["created"])] for m in rows]
    headers = [page.t("name"), page.t("version"), page.t("files"), page.t("size"), page.t("jobs"), "metrics",
               page.t("uploader"), page.t("created")]
    return layout(page, page.t("models"), notice(problem) + table(headers, cells, page.t("no_models"), "models"),
                  "models")


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
    cells = [[f'<a href="/jobs/{u(r.name)}">{h(r.name)}</a>', phase_badge(page, r.phase), h(r.gpus_per_worker),
              h(r.workers), when(r.start), h(duration(r.duration)), h(r.priority), h(r.project),
              h(r.reason)] for r in rows if r.tab == tab]
    headers = [page.t(k) for k in ("name", "phase", "gpus", "workers", "start", "duration", "priority", "project",
                                   "reason")]
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
            f'<h2>{page.t("conditions")}</h2>'
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
