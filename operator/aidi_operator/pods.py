"""The operator's pods: our own list + watch, keeping only each pod's compact state, by job.

Not through kopf: kopf runs its whole per-event machinery (causes, handler state, loggers, throttler, patch
objects) for every event of every watched object, and a 2-worker job's five pods make ten events as they
are created and found unschedulable — most of the operator's CPU per job (docs/benchmarks.md, Operator).
Here a pod event costs a JSON decode and a :class:`PodState`; only a change of what the decision reads
(``lifecycle.pod_state``) calls ``on_change`` for the pod's job, and nothing else is kept of the body.

Which namespaces: what ``aidi-operator -n`` says, as kopf reads it for the TrainJobs. No ``-n``: one
cluster-wide watch. Only plain names: one watch per namespace (the chart's per-team Roles allow no more).
Globs (``team-*``): the namespaces are watched too, and a watch is started for each one that matches,
also when it appears later, and stopped when it goes.

Each watch: a paged list, then a watch from the list's resourceVersion, resumed from the last one seen
(bookmarks keep it fresh); a ``410 Gone`` (that version is compacted away) lists again and folds in what
changed meanwhile, deletions included; other failures reconnect with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable
from typing import Any

# kopf's own namespace-pattern rules, so that pods are watched exactly where kopf watches TrainJobs.
from kopf._cogs.structs.references import NamespaceName, match_namespace, select_specific_namespaces

from aidi.jobs import podspec
from aidi.jobs.lifecycle import PodState, pod_state
from aidi_operator.kube import ApiRefused, KubeApi

log = logging.getLogger(__name__)

JobKey = tuple[str, str]  # (namespace, name) of a TrainJob: how its pods are kept, and its reconciles keyed

SELECTOR = f"{podspec.LABEL_JOB},{podspec.LABEL_MANAGED_BY}={podspec.MANAGED_BY}"
LIST_PAGE = 500  # pods per list page: a relist never holds thousands of whole pod bodies at once
WATCH_SECONDS = 300  # the server ends each watch after this long; it is resumed from the last version
BACKOFF = (0.5, 30.0)  # first and longest wait before reconnecting after a failure
GONE = 410

# What a pod event carries that the decision never reads: managedFields (about half of one of our pods' JSON)
# and the spec (most of the rest). Decoding all of it was ~18 % of the operator's CPU with 2-worker jobs.
_EVENT_TYPE = re.compile(r'\{"type":"([A-Z]+)","object":')
_METADATA, _MANAGED, _STATUS = '"metadata":{', ',"managedFields":[', ',"status":{'
_decoder = json.JSONDecoder()


def decode_event(line: bytes) -> dict[str, Any]:
    """A pod watch event with only the pod's metadata (less managedFields) and status decoded.

    Relies on how the API server writes objects (Go's field order: metadata ends with managedFields, the
    status comes last) and on JSON itself (a quote inside a string is escaped, so the markers below cannot
    come from a string's content); anything else — another server, another kind of event — is decoded
    whole. The result is checked, not trusted: the status must end the object.
    """
    text = line.decode()
    kind = _EVENT_TYPE.match(text)
    start = text.find(_METADATA)
    managed = text.find(_MANAGED, start)
    status_at = text.rfind(_STATUS)
    if kind is None or start < 0 or managed < 0 or status_at < managed:
        return dict(json.loads(text))
    try:
        meta = json.loads(text[start + len(_METADATA) - 1:managed] + "}")
        status, end = _decoder.raw_decode(text, status_at + len(_STATUS) - 1)
    except ValueError:
        return dict(json.loads(text))
    if text[end:].strip() != "}}" or not isinstance(meta, dict) or not isinstance(status, dict):
        return dict(json.loads(text))
    return {"type": kind.group(1), "object": {"metadata": meta, "status": status}}


def ours(labels: dict[str, str] | None) -> str | None:
    """The job a pod belongs to, if it is one of ours (checked here too: a test server may ignore selectors)."""
    labels = labels or {}
    if labels.get(podspec.LABEL_MANAGED_BY) != podspec.MANAGED_BY:
        return None
    return labels.get(podspec.LABEL_JOB) or None


class PodIndex:
    """(namespace, job) → the compact state of each of its pods. A pod whose state did not change keeps its
    object, so that "the same objects as last time" (the resync's skip) is an identity check."""

    def __init__(self) -> None:
        self._jobs: dict[JobKey, dict[str, PodState]] = {}
        self._where: dict[tuple[str, str], str] = {}  # (namespace, pod) → job

    def get(self, key: JobKey, default: Iterable[PodState] = ()) -> tuple[PodState, ...]:
        pods = self._jobs.get(key)
        return tuple(pods.values()) if pods else tuple(default)

    def __len__(self) -> int:
        return len(self._where)

    def put(self, namespace: str, job: str, pod: PodState) -> set[JobKey]:
        """Keep ``pod``; the jobs whose pods changed (none when it is as it was)."""
        changed = self.remove(namespace, pod.name) if self._where.get((namespace, pod.name), job) != job else set()
        pods = self._jobs.setdefault((namespace, job), {})
        if pods.get(pod.name) != pod:
            pods[pod.name] = pod
            self._where[(namespace, pod.name)] = job
            changed.add((namespace, job))
        return changed

    def remove(self, namespace: str, name: str) -> set[JobKey]:
        job = self._where.pop((namespace, name), None)
        if job is None:
            return set()
        pods = self._jobs.get((namespace, job), {})
        pods.pop(name, None)
        if not pods:
            self._jobs.pop((namespace, job), None)
        return {(namespace, job)}

    def names(self, namespace: str | None) -> set[tuple[str, str]]:
        """(namespace, pod) of every pod kept in ``namespace`` (None: in all)."""
        return {k for k in self._where if namespace is None or k[0] == namespace}


class PodWatch:
    """Keeps a :class:`PodIndex` in line with the API server, for the namespaces kopf serves."""

    def __init__(self, api: KubeApi, patterns: Iterable[str], index: PodIndex,
                 on_change: Callable[[JobKey], None]) -> None:
        self.api, self.index, self.on_change = api, index, on_change
        self.patterns = [NamespaceName(p) for p in patterns]
        self._tasks: dict[str | None, asyncio.Task[None]] = {}  # scope (a namespace, None: all) → its watch
        self._synced: dict[str | None, asyncio.Event] = {}
        self._namespaces: asyncio.Task[None] | None = None

    def serves(self, namespace: str) -> bool:
        return not self.patterns or any(match_namespace(NamespaceName(namespace), p) for p in self.patterns)

    async def start(self) -> None:
        """List every pod of ours where we serve (before kopf's first TrainJob event), then watch."""
        if not self.patterns:
            await self._start_scope(None)
            return
        specific = select_specific_namespaces(self.patterns)
        if len(specific) == len(self.patterns):
            await asyncio.gather(*(self._start_scope(ns) for ns in sorted(specific)))
            return
        try:
            version = await self._list_namespaces()
        except ApiRefused as exc:  # as kopf does: without the right to list namespaces, only the plain names
            log.warning(f"cannot follow namespaces ({exc}); watching pods in {sorted(specific) or 'none'} only")
            await asyncio.gather(*(self._start_scope(ns) for ns in sorted(specific)))
            return
        self._namespaces = asyncio.create_task(self._follow_namespaces(version), name="aidi namespaces")

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *([self._namespaces] if self._namespaces else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def synced(self, namespace: str) -> bool:
        """Every pod of ours in ``namespace`` has been listed (a job's pods are known, none look lost)."""
        event = self._synced.get(None) or self._synced.get(namespace)
        return event is not None and event.is_set()

    async def wait_synced(self, namespace: str, timeout: float) -> bool:
        if self.synced(namespace):
            return True
        event = self._synced.get(None) or self._synced.setdefault(namespace, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()

    async def _start_scope(self, scope: str | None) -> None:
        if scope in self._tasks:
            return
        try:
            version = await self._relist(scope)
        except Exception as exc:  # the watch lists again, with a backoff; jobs there wait for it (wait_synced)
            log.warning(f"listing pods in {scope or 'all namespaces'}: {exc!r}; trying again")
            version = None
        self._tasks[scope] = asyncio.create_task(self._watch(scope, version), name=f"aidi pods {scope or '*'}")

    def _stop_scope(self, scope: str) -> None:
        task = self._tasks.pop(scope, None)
        if task is not None:
            task.cancel()
        self._synced.pop(scope, None)
        for namespace, name in self.index.names(scope):
            self._changed(self.index.remove(namespace, name))

    @staticmethod
    def _path(scope: str | None) -> str:
        return f"/api/v1/namespaces/{scope}/pods" if scope else "/api/v1/pods"

    async def _relist(self, scope: str | None) -> str | None:
        """Replace what is kept of ``scope`` with a fresh list; the list's resourceVersion to watch from."""
        seen: set[tuple[str, str]] = set()
        params = {"labelSelector": SELECTOR, "limit": str(LIST_PAGE)}
        version = None
        while True:
            page = await self.api.list_page(self._path(scope), params)
            for pod in page.get("items") or []:
                key = self._apply("ADDED", pod)
                if key is not None:
                    seen.add(key)
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            if not meta.get("continue"):
                break
            params = {**params, "continue": meta["continue"]}
        for namespace, name in self.index.names(scope) - seen:  # deleted while we were not watching
            self._changed(self.index.remove(namespace, name))
        self._synced.setdefault(scope, asyncio.Event()).set()
        return version

    async def _watch(self, scope: str | None, version: str | None) -> None:
        backoff = BACKOFF[0]
        while True:
            try:
                if version is None:
                    version = await self._relist(scope)
                params = {"labelSelector": SELECTOR, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_SECONDS)}
                if version:
                    params["resourceVersion"] = version
                async for line in self.api.watch_lines(self._path(scope), params, read_timeout=WATCH_SECONDS + 60):
                    event = decode_event(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        if status.get("code") == GONE:
                            log.info(f"pods in {scope or 'all namespaces'}: version {version} is gone; listing again")
                            version = None
                            break
                        raise ApiRefused(int(status.get("code") or 500), str(status.get("message") or status))
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        self._apply(event.get("type"), obj)
                backoff = BACKOFF[0]  # the server ended the stream as it does every WATCH_SECONDS: resume
            except asyncio.CancelledError:
                raise
            except ApiRefused as exc:
                if exc.status == GONE:
                    version = None
                    continue
                log.warning(f"watching pods in {scope or 'all namespaces'}: {exc}; again in {backoff:.1f} s")
                backoff = await _back_off(backoff)
            except Exception as exc:  # a dropped connection, a server restarting: resume from the last version
                log.warning(f"watching pods in {scope or 'all namespaces'}: {exc!r}; again in {backoff:.1f} s")
                backoff = await _back_off(backoff)

    def _apply(self, kind: str | None, pod: dict[str, Any]) -> tuple[str, str] | None:
        meta = pod.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        job = ours(meta.get("labels"))
        if kind == "DELETED" or job is None or not self.serves(namespace):
            self._changed(self.index.remove(namespace, name))
            return None
        self._changed(self.index.put(namespace, job, pod_state(pod)))
        return namespace, name

    def _changed(self, keys: set[JobKey]) -> None:
        for key in keys:
            self.on_change(key)

    async def _list_namespaces(self) -> str | None:
        page = await self.api.list_page("/api/v1/namespaces", {})
        names = {(n.get("metadata") or {}).get("name") or "" for n in page.get("items") or []}
        for gone in [ns for ns in self._tasks if ns is not None and ns not in names]:  # deleted while away
            self._stop_scope(gone)
        await asyncio.gather(*(self._start_scope(ns) for ns in sorted(names) if self.serves(ns)))
        return (page.get("metadata") or {}).get("resourceVersion")

    async def _follow_namespaces(self, version: str | None) -> None:
        """Start a pod watch for each served namespace that appears, stop it when the namespace goes."""
        backoff = BACKOFF[0]
        while True:
            try:
                if version is None:
                    version = await self._list_namespaces()
                params = {"allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
                if version:
                    params["resourceVersion"] = version
                async for event in self.api.watch("/api/v1/namespaces", params, read_timeout=WATCH_SECONDS + 60):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise ApiRefused(int(obj.get("code") or 500), str(obj.get("message") or obj))
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    name = (obj.get("metadata") or {}).get("name") or ""
                    if event.get("type") == "BOOKMARK" or not name or not self.serves(name):
                        continue
                    if event.get("type") == "DELETED":
                        self._stop_scope(name)
                    elif name not in self._tasks:
                        await self._start_scope(name)
                backoff = BACKOFF[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ApiRefused) and exc.status == GONE:
                    version = None
                    continue
                log.warning(f"following namespaces: {exc!r}; again in {backoff:.1f} s")
                backoff = await _back_off(backoff)


async def _back_off(delay: float) -> float:
    """Wait ``delay`` (with jitter: many operators' watches do not come back in step); the next delay."""
    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
    return min(delay * 2, BACKOFF[1])

