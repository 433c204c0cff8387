"""The console's HTTP side (aiohttp): sessions, the login, the pages, the JSON API, security headers.

Every route but ``/login``, ``/healthz`` and ``/static/`` needs a session cookie (from the login form) or
``Authorization: Bearer APPID:APPKEY``; without one the answer is 401 and carries no data. Blocking work
(the kubernetes client, the dataspace) runs in threads so one slow call never stalls other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from aidi.cluster.gpucluster import Cluster, ResolvedCluster
from aidi.cluster.kube import KubeJobClient, api_client
from aidi.console import pages, views
from aidi.console.appkeys import AppKeyIssuer, gpucluster_snippet
from aidi.console.i18n import pick_language
from aidi.console.identity import Identity, login
from aidi.console.settings import ConsoleSettings
from aidi.errors import AidiError, AuthError, NotFoundError, UsageError

log = logging.getLogger("aidi.console")

COOKIE = "aidi_console"
LANG_COOKIE = "aidi_lang"
FRAGMENT_HEADER = "X-Console-Fragment"
PUBLIC_PREFIXES = ("/login", "/static/", "/healthz")
BEARER_CACHE_SECONDS = 30.0
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    id: str
    identity: Identity
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # A lambda, not ``time.monotonic`` itself: the clock is looked up when a session is made, so one
    # clock (the module's) decides both when a session was last seen and whether it has expired.
    last_seen: float = field(default_factory=lambda: time.monotonic())
    via_cookie: bool = True


class Sessions:
    """Sessions in memory (one console replica): a restart logs everyone out, which is safe.

    Each session holds the user's API client (a connection pool). ``sweep`` (run on a timer by the app)
    ends idle sessions and closes stale bearer entries, so a client held by a session nobody comes back to
    is released; at most ``per_user`` sessions per user live at once (the oldest ends first), so a script
    that logs in in a loop cannot pile up clients.
    """

    def __init__(self, idle_seconds: float, per_user: int = 10) -> None:
        self.idle = idle_seconds
        self.per_user = per_user
        self._by_id: dict[str, Session] = {}
        self._bearer: dict[str, tuple[float, Session]] = {}
        self._retired: list[tuple[float, Session]] = []   # replaced bearer entries, closed by a later sweep

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self, identity: Identity) -> Session:
        owner = _owner(identity)
        mine = sorted((s for s in self._by_id.values() if _owner(s.identity) == owner), key=lambda s: s.last_seen)
        for oldest in mine[:max(0, len(mine) - self.per_user + 1)]:
            self.drop(oldest.id)
        session = Session(id=secrets.token_urlsafe(32), identity=identity)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        if time.monotonic() - session.last_seen > self.idle:
            self.drop(session.id)
            return None
        session.last_seen = time.monotonic()
        return session

    def drop(self, session_id: str) -> None:
        session = self._by_id.pop(session_id, None)
        if session is not None:
            session.identity.close()

    def sweep(self) -> int:
        """End idle sessions and forget stale bearer entries, closing their clients; returns how many ended."""
        now = time.monotonic()
        idle = [s.id for s in self._by_id.values() if now - s.last_seen > self.idle]
        for session_id in idle:
            self.drop(session_id)
        # A bearer entry may still serve the request that made it: close it only well after it went stale.
        stale = [k for k, v in self._bearer.items() if now - v[0] >= 2 * BEARER_CACHE_SECONDS]
        for key in stale:
            self._retired.append(self._bearer.pop(key))
        done = [r for r in self._retired if now - r[0] >= 2 * BEARER_CACHE_SECONDS]
        self._retired = [r for r in self._retired if now - r[0] < 2 * BEARER_CACHE_SECONDS]
        for _, session in done:
            session.identity.close()
        return len(idle) + len(done)

    def bearer(self, token: str) -> Session | None:
        """A recently checked bearer token's session (the API server is asked again after a short while)."""
        found = self._bearer.get(hashlib.sha256(token.encode()).hexdigest())
        return found[1] if found and time.monotonic() - found[0] < BEARER_CACHE_SECONDS else None

    def remember_bearer(self, token: str, identity: Identity) -> Session:
        session = Session(id="", identity=identity, via_cookie=False)
        key = hashlib.sha256(token.encode()).hexdigest()
        replaced = self._bearer.get(key)
        if replaced is not None:
            self._retired.append(replaced)
        self._bearer[key] = (time.monotonic(), session)
        return session

    def forget_bearer(self, session: Session) -> None:
        self._bearer = {k: v for k, v in self._bearer.items() if v[1] is not session}
        session.identity.close()

    def close(self) -> None:
        for session_id in list(self._by_id):
            self.drop(session_id)
        for _, session in [*self._bearer.values(), *self._retired]:
            session.identity.close()
        self._bearer.clear()
        self._retired.clear()


def _owner(identity: Identity) -> tuple[str, str]:
    return identity.namespace, identity.user


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Method, path, status and time — never the query string (a login link could carry a token there)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, request.path, response.status, time)


# ----------------------------------------------------------------------------------------------- app

SETTINGS = web.AppKey("settings", ConsoleSettings)
SESSIONS = web.AppKey("sessions", Sessions)
SESSION = web.RequestKey("session", Session)
LANG = web.RequestKey("lang", str)


def create_app(settings: ConsoleSettings) -> web.Application:
    app = web.Application(middlewares=[_security_headers, _authenticate], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[SESSIONS] = Sessions(settings.session_idle_seconds, settings.sessions_per_user)
    app.cleanup_ctx.append(_sweeping)
    app.on_cleanup.append(_close_sessions)
    routes = [
        web.get("/healthz", _healthz), web.get("/static/{name}", _static),
        web.get("/login", _login_form), web.post("/login", _login_submit), web.post("/logout", _logout),
        web.get("/", _home), web.get("/datasets", _datasets), web.get("/datasets/{name}/{type}", _dataset),
        web.get("/models", _models), web.get("/models/{name}/{version}", _model),
        web.get("/models/{name}/{version}/eval/{label}/{path:.+}", _model_report_file),
        web.get("/jobs", _jobs), web.get("/jobs/{name}", _job),
        web.get("/personal", _personal), web.post("/personal/dataspace-token", _dataspace_token),
        web.post("/personal/appkeys", _appkey_create),
        web.post("/personal/appkeys/{id}/revoke", _appkey_revoke), web.get("/personal/ca.crt", _ca),
        web.get("/api/v1/whoami", _api_whoami), web.get("/api/v1/datasets", _api_datasets),
        web.get("/api/v1/datasets/{name}/{type}", _api_dataset), web.get("/api/v1/models", _api_models),
        web.get("/api/v1/models/{name}/{version}", _api_model),
        web.get("/api/v1/jobs", _api_jobs), web.get("/api/v1/jobs/{name}", _api_job),
        web.get("/api/v1/appkeys", _api_appkeys), web.post("/api/v1/appkeys", _api_appkey_create),
        web.delete("/api/v1/appkeys/{id}", _api_appkey_revoke),
    ]
    app.add_routes(routes)
    return app


async def _close_sessions(app: web.Application) -> None:
    app[SESSIONS].close()


def sweep_interval(idle_seconds: float) -> float:
    """How often idle sessions are looked for: a quarter of the idle limit, between 1 s and a minute."""
    return min(60.0, max(1.0, idle_seconds / 4))


async def _sweeping(app: web.Application) -> AsyncIterator[None]:
    """End idle sessions on a timer, not only when their cookie comes back (which it may never do)."""
    sessions = app[SESSIONS]

    async def loop() -> None:
        while True:
            await asyncio.sleep(sweep_interval(sessions.idle))
            ended = sessions.sweep()
            if ended:
                log.info("ended %d idle session(s); %d remain", ended, len(sessions))

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def settings_of(request: web.Request) -> ConsoleSettings:
    return request.app[SETTINGS]


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def page_of(request: web.Request) -> pages.Page:
    session: Session | None = request.get(SESSION)
    identity = session.identity if session else None
    return pages.Page(lang=request[LANG], path=request.path_qs, namespace=identity.namespace if identity else None,
                      user=identity.user if identity else None, csrf=session.csrf if session else None,
                      refresh_seconds=settings_of(request).refresh_seconds)


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


# ------------------------------------------------------------------------------------------ middleware


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[LANG] = pick_language(request.query.get("lang"), request.cookies.get(LANG_COOKIE),
                                    request.headers.get("Accept-Language"))
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if request.query.get("lang") == request[LANG]:
        response.set_cookie(LANG_COOKIE, request[LANG], max_age=365 * 86400, samesite="Strict",
                            secure=settings_of(request).secure_cookies)
    return response


def _unauthorized(request: web.Request, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="aidi-console"'}
    if request.path.startswith("/api/") or request.headers.get(FRAGMENT_HEADER):
        return web.json_response({"error": message}, status=401, headers=headers)
    return web.Response(text=pages.unauthorized(page_of(request)), status=401, content_type="text/html",
                        headers=headers)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    sessions: Sessions = request.app[SESSIONS]
    auth = request.headers.get("Authorization", "")
    session: Session | None = None
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
        session = sessions.bearer(token)
        if session is None:
            try:
                identity = await blocking(login, settings_of(request), token)
            except AuthError as exc:
                return _unauthorized(request, str(exc))
            session = sessions.remember_bearer(token, identity)
    else:
        session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return _unauthorized(request, "log in first: POST /login, or send Authorization: Bearer APPID:APPKEY")
    request[SESSION] = session
    if request.method not in ("GET", "HEAD") and session.via_cookie:
        sent = request.headers.get("X-CSRF-Token") or (await request.post()).get("csrf")
        if not isinstance(sent, str) or not secrets.compare_digest(sent, session.csrf):
            return web.Response(text="403: the form is stale; reload the page and try again", status=403)
    try:
        return await handler(request)
    except AuthError as exc:
        # The user's credential stopped working (revoked, expired): end the session.
        if session.via_cookie:
            sessions.drop(session.id)
        else:
            sessions.forget_bearer(session)
        return _unauthorized(request, str(exc))
    except NotFoundError as exc:
        return _error(request, 404, str(exc))
    except AidiError as exc:
        return _error(request, 400 if isinstance(exc, UsageError) else 502, str(exc))


def _error(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        return web.json_response({"error": message}, status=status)
    return web.Response(text=pages.error(page_of(request), status, message), status=status, content_type="text/html")


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


# ------------------------------------------------------------------------------------- public routes


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = Path(name).suffix
    if "/" in name or suffix not in STATIC_TYPES:
        raise web.HTTPNotFound()
    try:
        body = resources.files("aidi.console").joinpath("static", name).read_bytes()
    except (FileNotFoundError, OSError):
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=STATIC_TYPES[suffix], headers={"Cache-Control": "max-age=300"})


DEFAULT_NEXT = "/jobs"


def _safe_next(value: str | None) -> str:
    r"""``value`` when it is a path on this site, else the jobs page: an open redirect would hand a phishing
    page our login. Browsers drop tabs and newlines from a URL and read ``\`` as ``/``, so ``/<TAB>/evil``
    and ``/%09/evil`` are ``//evil``: the check runs on the decoded text (decoded until it stops changing)
    and refuses any control character or backslash, then wants ``/`` followed by neither ``/`` nor ``\``."""
    if not value:
        return DEFAULT_NEXT
    decoded, previous = value, None
    for _ in range(5):
        if decoded == previous:
            break
        previous, decoded = decoded, unquote(decoded)
    for text in (value, decoded):
        if any(ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in text):
            return DEFAULT_NEXT
        if not text.startswith("/") or text[1:2] == "/":
            return DEFAULT_NEXT
    return value


def _cross_site_reason(request: web.Request) -> str | None:
    """Why a login POST looks cross-site (login CSRF: logging the victim into the attacker's account), or None.

    ``Sec-Fetch-Site``, set by the browser itself, decides when present (every current browser sends it; with
    our ``Referrer-Policy: no-referrer`` Chromium's own same-origin form POST carries ``Origin: null``). Older
    browsers: ``Origin``, else ``Referer``, must name this host (``null`` does not: sandboxed frames send it).
    A request with none of them is not a browser's form (scripts, curl): allowed."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site is {site!r}"
    for header in ("Origin", "Referer"):
        sent = request.headers.get(header)
        if sent is None:
            continue
        host = urlsplit(sent).netloc if sent != "null" else ""
        if not host or host.lower() != request.host.lower():
            return f"{header} {sent!r} is not this console ({request.host})"
        return None
    return None


async def _login_form(request: web.Request) -> web.Response:
    settings = settings_of(request)
    return html(pages.login(page_of(request), settings.mode, _safe_next(request.query.get("next"))))


async def _login_submit(request: web.Request) -> web.StreamResponse:
    settings = settings_of(request)
    form = await request.post()
    token, next_url = str(form.get("token") or ""), _safe_next(str(form.get("next") or ""))
    cross_site = _cross_site_reason(request)
    if cross_site:
        log.warning("refused a cross-site login POST: %s", cross_site)
        return html(pages.login(page_of(request), settings.mode, next_url,
                                error="this login form was sent from another site; open the console's own "
                                      "login page and log in there"), status=403)
    try:
        identity = await blocking(login, settings, token)
    except AuthError as exc:
        return html(pages.login(page_of(request), settings.mode, next_url, error=str(exc)), status=401)
    except AidiError as exc:
        return html(pages.login(page_of(request), settings.mode, next_url, error=str(exc)), status=502)
    session = request.app[SESSIONS].new(identity)
    log.info("login: %s in namespace %s", identity.user, identity.namespace)
    response = web.HTTPSeeOther(next_url)
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=settings.secure_cookies,
                        path="/")
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].drop(session_of(request).id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/jobs")


# ------------------------------------------------------------------------------------------ datasets


async def _datasets(request: web.Request) -> web.Response:
    identity = session_of(request).identity
    rows, problem = [], None
    try:
        rows = await blocking(views.list_datasets, identity)
    except AuthError:
        raise
    except AidiError as exc:
        problem = str(exc)
    return html(pages.datasets(page_of(request), rows, problem))


async def _dataset(request: web.Request) -> web.Response:
    identity = session_of(request).identity
    row, manifest = await blocking(views.dataset_detail, identity, request.match_info["name"],
                                   request.match_info["type"], request.query.get("version"))
    used_by = await blocking(views.models_trained_on, identity, row.name, row.type, manifest.version)
    return html(pages.dataset(page_of(request), row, manifest, used_by))


async def _models(request: web.Request) -> web.Response:
    rows, problem = [], None
    try:
        rows = await blocking(views.list_models, session_of(request).identity)
    except AuthError:
        raise
    except AidiError as exc:
        problem = str(exc)
    return html(pages.models(page_of(request), rows, problem))


async def _model(request: web.Request) -> web.Response:
    detail = await blocking(views.model_detail, session_of(request).identity, request.match_info["name"],
                            request.match_info["version"])
    return html(pages.model(page_of(request), detail))


# A stored report is the `aidi eval` page: inline script and styles, pictures beside it. It is served sandboxed
# (an opaque origin: its script can never reach the console's session), with nothing allowed from elsewhere.
REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
              "sandbox allow-scripts")
_REPORT_TYPES = {".html": "text/html", ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg",
                 ".jpeg": "image/jpeg"}


async def _model_report_file(request: web.Request) -> web.Response:
    info = request.match_info
    data = await blocking(views.model_report_file, session_of(request).identity, info["name"], info["version"],
                          info["label"], info["path"])
    kind = _REPORT_TYPES.get(Path(info["path"]).suffix.lower(), "application/octet-stream")
    return web.Response(body=data, content_type=kind, charset="utf-8" if kind.startswith("text/") else None,
                        headers={"Content-Security-Policy": REPORT_CSP})


# ---------------------------------------------------------------------------------------------- jobs


def _tab(request: web.Request) -> str:
    tab = request.query.get("tab", "running")
    return tab if tab in views.TABS else "running"


async def _jobs(request: web.Request) -> web.Response:
    identity = session_of(request).identity
    rows, problem = [], None
    try:
        rows = await blocking(views.list_jobs, identity)
    except AuthError:
        raise
    except AidiError as exc:
        problem = str(exc)
    page = page_of(request)
    fragment = pages.jobs_fragment(page, rows, _tab(request), problem)
    if request.headers.get(FRAGMENT_HEADER):
        return html(fragment)
    return html(pages.jobs_page(page, fragment))


async def _job(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    detail = await blocking(views.job_detail, session_of(request).identity, name,
                            settings_of(request).log_tail_lines)
    page = page_of(request)
    fragment = pages.job_fragment(page, detail)
    if request.headers.get(FRAGMENT_HEADER):
        return html(fragment)
    return html(pages.job_page(page, name, fragment))


# ------------------------------------------------------------------------------------------ personal


def _issuer(request: web.Request) -> tuple[AppKeyIssuer, bool]:
    """(issuer, owned): the console's own credential in a cluster; the user's own on a workstation."""
    settings, identity = settings_of(request), session_of(request).identity
    if not settings.appkeys_enabled:
        raise UsageError("APP KEYs are not enabled on this console")
    if settings.mode == "local":
        client = identity.jobs()
        if not isinstance(client, KubeJobClient):
            raise UsageError("APP KEYs are credentials for a Kubernetes cluster; the local runner needs none")
        return AppKeyIssuer(client.api, settings.team_role, settings.appkey_ttl_seconds), False
    token = settings.issuer_token()
    if not token:
        raise UsageError(f"the console has no ServiceAccount token at {settings.issuer_token_file}; APP KEYs "
                         "need it (chart: console.appKeys.enabled=true)")
    console = Cluster(appkey=token, server=settings.kube_server, certificate_authority=settings.kube_ca,
                      insecure=settings.kube_insecure)
    api, _ = api_client(ResolvedCluster("console", console, Path("console ServiceAccount")))
    return AppKeyIssuer(api, settings.team_role, settings.appkey_ttl_seconds), True


def _with_issuer(request: web.Request, work: Callable[[AppKeyIssuer], Any]) -> Any:
    issuer, owned = _issuer(request)
    try:
        return work(issuer)
    except AuthError as exc:
        # The issuer's refusal is not the user's: their session stays (the middleware ends it on AuthError).
        whose = "your cluster credential" if not owned else "the console's ServiceAccount"
        raise AidiError(f"{whose} may not manage APP KEYs in this namespace ({exc}); see docs/console.md, "
                        "\"RBAC\"") from None
    finally:
        if owned:
            issuer.close()


def _issue(request: web.Request, queue: str, description: str) -> tuple[Any, str]:
    settings, identity = settings_of(request), session_of(request).identity
    # The user's own token must still work in the namespace: the console mints keys only for its holders.
    identity.jobs().list_jobs()
    issued = _with_issuer(request, lambda issuer: issuer.issue(identity.namespace, queue=queue,
                                                               created_by=identity.user, description=description))
    ca = "/path/to/aidi-ca.crt" if settings.public_ca_file or (settings.mode == "cluster" and settings.kube_ca) \
        else None
    snippet = gpucluster_snippet(issued, settings.public_server or settings.kube_server, ca,
                                 insecure=settings.kube_insecure and not ca)
    return issued, snippet


def _personal_view(request: web.Request, **extra: Any) -> pages.PersonalView:
    settings, identity = settings_of(request), session_of(request).identity
    ds = identity.dataspace
    keys, problem = [], None
    if settings.appkeys_enabled:
        try:
            keys = _with_issuer(request, lambda issuer: issuer.list(identity.namespace))
        except AidiError as exc:
            problem = str(exc)
    endpoint = settings.dataspace_public_endpoint or (ds.endpoint if ds else None)
    return pages.PersonalView(
        namespace=identity.namespace, queue=identity.queue, user=identity.user, dataspace_endpoint=endpoint,
        dataspace_bucket=ds.bucket if ds and not ds.is_local else None,
        dataspace_access_key=ds.access_key if ds and ds.access_key else None,
        dataspace_problem=(f"the dataspace is the local folder {ds.local_root}: hitc needs no token "
                           f"(hitc init --endpoint {ds.endpoint})" if ds and ds.is_local
                           else identity.dataspace_problem), appkeys_enabled=settings.appkeys_enabled, keys=keys,
        keys_problem=problem, has_ca=bool(_ca_file(settings)), **extra)


def _ca_file(settings: ConsoleSettings) -> str | None:
    return settings.public_ca_file or (settings.kube_ca if settings.mode == "cluster" else None)


async def _personal(request: web.Request) -> web.Response:
    revoked = request.query.get("revoked")
    flash = pages.text("revoked", request[LANG], id=revoked) if revoked else None
    view = await blocking(lambda: _personal_view(request, flash=flash))
    return html(pages.personal(page_of(request), view))


async def _dataspace_token(request: web.Request) -> web.Response:
    """The team's dataspace token, on an explicit request only (a POST with the form's CSRF token)."""
    identity = session_of(request).identity
    ds = identity.dataspace
    if ds is None or not ds.access_key:
        raise NotFoundError(identity.dataspace_problem or "your team has no dataspace token")
    log.info("dataspace token of %s (access key %s) shown to %s", identity.namespace, ds.access_key, identity.user)
    view = await blocking(lambda: _personal_view(request, dataspace_token=ds.token))
    return html(pages.personal(page_of(request), view))


async def _appkey_create(request: web.Request) -> web.Response:
    form = await request.post()
    issued, snippet = await blocking(_issue, request, str(form.get("queue") or ""), str(form.get("description") or ""))
    log.info("APP KEY %s issued for %s by %s", issued.key.id, issued.key.appid, session_of(request).identity.user)
    view = await blocking(lambda: _personal_view(request, new_key_snippet=snippet, new_key_token=issued.token))
    return html(pages.personal(page_of(request), view))


async def _appkey_revoke(request: web.Request) -> web.StreamResponse:
    key_id = request.match_info["id"]
    identity = session_of(request).identity
    await blocking(_with_issuer, request, lambda issuer: issuer.revoke(identity.namespace, key_id))
    log.info("APP KEY %s in %s revoked by %s", key_id, identity.namespace, identity.user)
    raise web.HTTPSeeOther(f"/personal?revoked={key_id}")


async def _ca(request: web.Request) -> web.Response:
    path = _ca_file(settings_of(request))
    if not path:
        raise NotFoundError("this console has no CA certificate to hand out")
    body = await blocking(Path(path).read_bytes)
    return web.Response(body=body, content_type="application/x-x509-ca-cert",
                        headers={"Content-Disposition": 'attachment; filename="aidi-ca.crt"'})


# ------------------------------------------------------------------------------------------- the API


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


async def _api_whoami(request: web.Request) -> web.Response:
    identity = session_of(request).identity
    return _json({"namespace": identity.namespace, "queue": identity.queue, "user": identity.user,
                  "dataspace": identity.dataspace.endpoint if identity.dataspace else None})


async def _api_datasets(request: web.Request) -> web.Response:
    rows = await blocking(views.list_datasets, session_of(request).identity)
    return _json([r.to_json() for r in rows])


async def _api_dataset(request: web.Request) -> web.Response:
    row, manifest = await blocking(views.dataset_detail, session_of(request).identity, request.match_info["name"],
                                   request.match_info["type"], request.query.get("version"))
    return _json({**row.to_json(), "manifest": manifest.to_json()})


async def _api_models(request: web.Request) -> web.Response:
    return _json(await blocking(views.list_models, session_of(request).identity))


async def _api_model(request: web.Request) -> web.Response:
    detail = await blocking(views.model_detail, session_of(request).identity, request.match_info["name"],
                            request.match_info["version"])
    return _json(detail.record)


async def _api_jobs(request: web.Request) -> web.Response:
    rows = await blocking(views.list_jobs, session_of(request).identity)
    tab = request.query.get("tab")
    return _json([r.__dict__ for r in rows if tab is None or r.tab == tab])


async def _api_job(request: web.Request) -> web.Response:
    detail = await blocking(views.job_detail, session_of(request).identity, request.match_info["name"],
                            settings_of(request).log_tail_lines)
    return _json(detail.to_json())


async def _api_appkeys(request: web.Request) -> web.Response:
    identity = session_of(request).identity
    keys = await blocking(_with_issuer, request, lambda issuer: issuer.list(identity.namespace))
    return _json([k.to_json() for k in keys])


async def _api_appkey_create(request: web.Request) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise UsageError("the body must be JSON: {\"queue\": \"...\", \"description\": \"...\"}") from None
    issued, snippet = await blocking(_issue, request, str(body.get("queue") or ""), str(body.get("description") or ""))
    return _json({**issued.key.to_json(), "appkey": issued.appkey, "token": issued.token,
                  "gpucluster_yaml": snippet}, status=201)


async def _api_appkey_revoke(request: web.Request) -> web.Response:
    identity, key_id = session_of(request).identity, request.match_info["id"]
    await blocking(_with_issuer, request, lambda issuer: issuer.revoke(identity.namespace, key_id))
    return _json({"revoked": key_id})


async def serve(settings: ConsoleSettings, host: str, port: int,
                started: Callable[[str], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or forever); ``started`` gets the base URL once the port is bound."""
    runner = web.AppRunner(create_app(settings), access_log_class=PathOnlyAccessLogger, access_log=log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    if started:
        started(f"http://{shown}:{bound}")
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await runner.cleanup()
