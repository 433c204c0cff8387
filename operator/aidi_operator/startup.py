"""Settings, login and the shared API client, kept in kopf's ``memo`` and closed on cleanup."""

from __future__ import annotations

import asyncio
import heapq
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import kopf

from aidi.jobs.lifecycle import PodState
from aidi.jobs.podspec import PodSettings
from aidi_operator.kube import KubeApi
from aidi_operator.netpol import Isolation
from aidi_operator.pods import JobKey, PodIndex, PodWatch

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "aidi.io"
FINALIZER = "aidi.io/trainjob"

def job_key(namespace: str | None, name: str) -> JobKey:
    """TrainJobs and pods are namespaced: kopf passes their namespace (its handlers' type allows None)."""
    if namespace is None:
        raise kopf.PermanentError(f"{name}: a namespaced object arrived without a namespace")
    return namespace, name


@dataclass(frozen=True)
class OperatorSettings:
    """Everything ``aidi-operator``'s flags and environment set (docs/operator.md)."""

    pods: PodSettings = field(default_factory=PodSettings)
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    liveness_port: int = 8080  # 0: no liveness endpoint
    liveness_host: str = "0.0.0.0"  # the kubelet probes the pod IP
    # A safety net: every job is reconciled this often even without events. Deadlines, TTLs and retries
    # do not wait for it; each job is woken when its own next one is due.
    resync_seconds: float = 300.0
    log_tail_lines: int = 50
    # How often a running job's status.progress is refreshed from worker 0's log tail; 0: never (docs/progress.md).
    progress_seconds: float = 120.0
    # How long a new job's first status may wait for the scheduler's verdict on each of its pods (trainjobs._settles).
    first_status_wait_seconds: float = 120.0
    server: str | None = None  # an API server URL to use without TLS checks (kmock, benchmarks)


class Settling(NamedTuple):
    """A new job whose first status is held back (``trainjobs._settles``); times on the event loop's clock."""

    uid: str | None
    window_end: float  # not written before this: its pods' first changes come within milliseconds
    give_up: float  # nor later than this, however long the scheduler's verdict on its pods takes
    # What would be written now, as JSON text: ~0.6 KB where the dicts took ~3 KB, for as many jobs as a burst
    # has waiting for their pods' verdicts (thousands; 11 MB more peak RSS at 5,000 jobs as dicts).
    status: bytes


@dataclass
class OperatorState:
    """What the handlers share. One object in ``memo.state``: kopf shallow-copies memos per object."""

    settings: OperatorSettings
    api: KubeApi | None = None
    jobs: Any = None  # kopf.Index: (namespace, name) → TrainJob body
    pods: PodIndex | None = None  # (namespace, job) → PodState of each pod of the job: our own watch (pods.py)
    pod_watch: PodWatch | None = None
    locks: dict[JobKey, asyncio.Lock] = field(default_factory=dict)
    statuses: dict[JobKey, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)  # (uid, last written)
    settling: dict[JobKey, Settling] = field(default_factory=dict)  # new jobs whose first status waits
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # kopf calls resource handlers only once every index is filled; the resync waits for the first one.
    indexed: bool = False
    # When each job is next due without an event (a deadline, a TTL, a retry), on the loop's clock; the
    # heap holds (due, key) with stale entries skipped when popped.
    due: dict[JobKey, float] = field(default_factory=dict)
    due_heap: list[tuple[float, JobKey]] = field(default_factory=list)
    due_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # What each job's last successful reconcile read (``trainjobs._inputs``): the resync skips a job unchanged since.
    reconciled: dict[JobKey, tuple[Any, ...]] = field(default_factory=dict)
    # Pods just created, (name, attempt), that the pod watch has not shown yet, and until when (the loop's
    # clock) a reconcile waits for them (``trainjobs.awaiting_own_pods``).
    expected: dict[JobKey, tuple[frozenset[tuple[str, int]], float]] = field(default_factory=dict)
    isolation: Isolation = field(default_factory=Isolation)  # each namespace's NetworkPolicy under the jobs'
    # The uid of the job whose placed-pod children (its NetworkPolicy, its Service) are made.
    placed: dict[JobKey, str | None] = field(default_factory=dict)

    def wake(self, key: JobKey, delay: float) -> None:
        """Reconcile ``key`` in ``delay`` seconds (or sooner, if it is due sooner already)."""
        when = asyncio.get_running_loop().time() + max(0.0, delay)
        if self.due.get(key, float("inf")) <= when:
            return
        self.due[key] = when
        heapq.heappush(self.due_heap, (when, key))
        self.due_changed.set()

    def pods_of(self, key: JobKey) -> tuple[PodState, ...]:
        return self.pods.get(key) if self.pods is not None else ()

    def lock(self, key: JobKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: JobKey) -> None:
        self.locks.pop(key, None)
        self.statuses.pop(key, None)
        self.settling.pop(key, None)
        self.due.pop(key, None)
        self.reconciled.pop(key, None)
        self.expected.pop(key, None)
        self.placed.pop(key, None)


def state_of(memo: Any) -> OperatorState:
    state: OperatorState = memo.state
    return state


class NoDiffBase(kopf.DiffBaseStorage):
    """No change handlers, so no diffs: kopf would otherwise deep-copy every object (managedFields and all)
    on every event to build an "essence" nothing reads (10 % of the operator's CPU at 600 jobs)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's own settings: nothing that blocks deletion, nothing written outside our annotations."""
    ks = kopf.OperatorSettings()
    # kopf adds its finalizer only for handlers that need one (timers, daemons, mandatory deletion handlers);
    # none of ours do, so a TrainJob is deleted, and its children garbage-collected, even while the operator is
    # down. This only names the finalizer kopf would use, in our own domain, should a handler ever need it.
    ks.persistence.finalizer = FINALIZER
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    ks.persistence.diffbase_storage = NoDiffBase()
    # Kubernetes Events for warnings only; the lifecycle posts its own events for users.
    ks.posting.level = logging.WARNING
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    return ks


def connection_info(settings: OperatorSettings) -> kopf.ConnectionInfo:
    """The API server and credentials: explicit server, in-cluster service account, or kubeconfig."""
    if settings.server:
        return kopf.ConnectionInfo(server=settings.server, insecure=True, default_namespace="default")
    kwargs: dict[str, Any] = {"logger": log, "settings": kopf.OperatorSettings()}
    # kopf's own kubeconfig reader first: it takes tokens, certificates and passwords, and needs no
    # kubernetes client (~12 MB once imported). The client is the fallback for what only it understands
    # (exec plugins, token files): kopf's reader then finds no credentials at all.
    info = None
    for login_with in (kopf.login_with_service_account, _kubeconfig_credentials, kopf.login_via_client):
        try:
            info = login_with(**kwargs)
        except (kopf.LoginError, OSError, ValueError, KeyError) as exc:  # e.g. $KUBECONFIG names a missing file
            log.debug(f"{login_with.__name__}: {exc}")
        if info is not None:
            break
    if info is None:
        raise kopf.PermanentError(
            "no Kubernetes credentials: run inside a cluster, set KUBECONFIG (or ~/.kube/config), "
            "or pass --server URL")
    return info


def _kubeconfig_credentials(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_kubeconfig(**kwargs)
    if info is None or not (info.token or info.certificate_path or info.certificate_data or info.username):
        return None
    return info


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return connection_info(state_of(memo).settings)


@kopf.on.startup()
async def start(memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    state = state_of(memo)
    state.api = KubeApi(lambda: connection_info(state.settings))
    # kopf passes each index as a keyword named after its handler (trainjobs.trainjob_index).
    state.jobs = kwargs["trainjob_index"]
    where = ", ".join(state.settings.namespaces) or "all namespaces"
    logger.info(f"aidi-operator watching TrainJobs in {where}; job image {state.settings.pods.job_image}")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    state.tasks.clear()
    if state.pod_watch is not None:
        await state.pod_watch.stop()
        state.pod_watch = None
    if state.api is not None:
        await state.api.close()
        state.api = None
