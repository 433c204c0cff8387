"""A small async Kubernetes API client on aiohttp, built from the credentials kopf logged in with.

Async on kopf's own loop: no threads, no blocking client (a sync client called from an async handler on
the same loop deadlocks). Answers map onto what the reconcile needs: 404 on read/delete is "not there",
409 on create is "already there" (success), 409 elsewhere and 429/5xx/connection errors are
``kopf.TemporaryError`` (kopf retries the handler), other 4xx are :class:`ApiRefused` with the API
server's own message (shown in the job's status).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from aidi.api import trainjob as tj

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
RETRY_DELAY = 2.0


class ApiRefused(Exception):
    """The API server refused a request for a reason retrying will not fix by itself (403, 422, ...)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def core_path(namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return _tail(path, name, sub)


def group_path(api_version: str, namespace: str, plural: str, name: str | None = None,
               sub: str | None = None) -> str:
    return _tail(f"/apis/{api_version}/namespaces/{namespace}/{plural}", name, sub)


def trainjob_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return group_path(tj.API_VERSION, namespace, tj.PLURAL, name, sub)


def _tail(path: str, name: str | None, sub: str | None) -> str:
    if name:
        path += "/" + quote(name)
    if sub:
        path += "/" + sub
    return path


class KubeApi:
    """Requests against one API server. ``login`` returns fresh credentials (called again on a 401)."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], timeout: float = 30.0,
                 keepalive: bool = True) -> None:
        self._login = login
        self._keepalive = keepalive
        # Per socket operation, not per request: a request waiting for one of the pool's connections (a burst
        # of jobs, a slow server) is not an API server that does not answer. With a total timeout, hundreds
        # of queued creates failed at once after 30 s and came back 2 s later as a retry storm.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _connect(self) -> aiohttp.ClientSession:
        if self._session is None or self._info is None:
            self._info = self._login()
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context(), limit=64,
                                         force_close=not self._keepalive),
                headers=self._info.as_http_headers(), timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                       content_type: str = "application/json", text: bool = False,
                       parse: bool = True) -> tuple[int, Any]:
        """(HTTP status, payload): the JSON answer, its text (errors, ``text``), or None (``parse=False``:
        a write whose answer — the whole object again — nobody reads is not decoded)."""
        for attempt in (1, 2):
            session = self._connect()
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if body is not None else {}
            try:
                async with session.request(method, path.lstrip("/"), data=data, params=params,
                                           headers=headers) as resp:
                    if resp.status == 401 and attempt == 1:
                        await self.close()  # credentials expired: log in again once
                        continue
                    if text or resp.status >= 400:
                        return resp.status, await resp.text()
                    if not parse:
                        await resp.read()
                        return resp.status, None
                    return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise kopf.TemporaryError(f"{method} {path}: the API server did not answer ({exc})",
                                          delay=RETRY_DELAY) from exc
        raise kopf.TemporaryError(f"{method} {path}: the API server refused our credentials (401)", delay=30)

    @staticmethod
    def _check(method: str, path: str, status: int, payload: Any) -> None:
        if status < 400:
            return
        message = _api_message(payload)
        if status in (409, 429) or status >= 500:
            raise kopf.TemporaryError(f"{method} {path}: {status} {message}", delay=RETRY_DELAY)
        raise ApiRefused(status, message)

    async def get(self, path: str) -> dict[str, Any] | None:
        status, payload = await self._request("GET", path)
        if status == 404:
            return None
        self._check("GET", path, status, payload)
        return _object(payload)

    async def list(self, path: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Items at ``path`` with these labels. Filtered here too: some servers (kmock) ignore selectors."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        status, payload = await self._request("GET", path, params=params)
        if status == 404:
            return []
        self._check("GET", path, status, payload)
        items = payload.get("items") or []
        if labels:
            items = [i for i in items
                     if all((i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]
        return items

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        """True when created, False when it already existed (both mean: it is there now)."""
        status, payload = await self._request("POST", path, body=body, parse=False)
        if status == 409:
            return False
        self._check("POST", path, status, payload)
        return True

    async def patch(self, path: str, body: dict[str, Any]) -> bool:
        """A JSON merge patch: True when applied, False when the object is gone."""
        status, payload = await self._request("PATCH", path, body=body, content_type=MERGE_PATCH, parse=False)
        if status == 404:
            return False
        self._check("PATCH", path, status, payload)
        return True

    async def delete(self, path: str) -> bool:
        """True when deleted now, False when it was already gone. Children go in the background."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        status, payload = await self._request("DELETE", path, body=options, parse=False)
        if status == 404:
            return False
        self._check("DELETE", path, status, payload)
        return True

    async def list_page(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One list answer as the server gives it (items, and metadata's resourceVersion and continue token)."""
        status, payload = await self._request("GET", path, params=params)
        self._check("GET", path, status, payload)
        return payload if isinstance(payload, dict) else {}

    async def watch(self, path: str, params: dict[str, str] | None = None,
                    read_timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type": ..., "object": ...}``) at ``path`` until the server ends the stream."""
        async for line in self.watch_lines(path, params, read_timeout):
            yield json.loads(line)

    async def watch_lines(self, path: str, params: dict[str, str] | None = None,
                          read_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The watch stream's events as the server sent them, one JSON text each, for a caller that decodes
        only what it reads (``pods.decode_event``).

        ``read_timeout``: a stream silent for this long is taken for dead (with bookmarks asked for, the
        server sends something every minute or so, and ends the stream at its ``timeoutSeconds``).
        """
        session = self._connect()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.sock_connect, sock_read=read_timeout)
        async with session.get(path.lstrip("/"), params={**(params or {}), "watch": "true"},
                               timeout=timeout) as resp:
            if resp.status >= 400:
                self._check("WATCH", path, resp.status, await resp.text())
            # Lines split here rather than by aiohttp's readline, which refuses lines over 128 KiB.
            pending = b""
            async for chunk in resp.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line
            if pending.strip():
                yield pending

    async def text(self, path: str, params: dict[str, str] | None = None) -> str | None:
        status, payload = await self._request("GET", path, params=params, text=True)
        if status >= 400:
            return None
        return str(payload)


def _object(payload: Any) -> dict[str, Any] | None:
    """The object an answer carries, if it carries one (a test server may answer with nothing)."""
    return payload if isinstance(payload, dict) else None


def _api_message(payload: Any) -> str:
    if isinstance(payload, str):
        text = payload
        try:
            payload = json.loads(text)
        except ValueError:
            return text.strip()[:500]
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("reason") or payload)[:500]
    return str(payload)[:500]
