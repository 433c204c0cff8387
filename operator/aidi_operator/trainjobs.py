"""TrainJob handlers: every event, a pod change, a due deadline, TTL or retry runs one idempotent reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from aidi.api import trainjob as tj
from aidi.api.errors import from_pydantic
from aidi.jobs import lifecycle, podspec
from aidi_operator import netpol, progress
from aidi_operator.kube import ApiRefused, KubeApi, core_path, group_path, trainjob_path
from aidi_operator.pods import JobKey, PodIndex, PodWatch
from aidi_operator.startup import OperatorState, Settling, job_key, state_of

log = logging.getLogger(__name__)
RESOURCE = (tj.GROUP, tj.VERSION, tj.PLURAL)
CREATE_RETRY_DELAY = 10.0
STATUS_SETTLE_SECONDS = 1.0  # a new job's status is first written no sooner than this after its pods are made
POD_CHANGE_DELAY = 0.1  # a pod's change reconciles its job this much later, with the other changes by then
# How long a reconcile waits for the pod watch to show pods it just created, before taking them for lost.
OWN_PODS_WAIT = 30.0
RECONCILE_WORKERS = 128  # reconciles at once (``wakeups``); 32 held a 1,000 2-worker burst back (docs/benchmarks.md)
PODS_LISTED_WAIT = 5.0  # how long a job's event waits for its namespace's pods to be listed (a new namespace)
MAX_EVENT_MESSAGE = 1000  # the API server truncates Event messages at 1 KiB
EVENT_SOURCE = "aidi-operator"


# What a reconcile reads of a TrainJob: not kopf's or kubectl's bookkeeping (managedFields, the
# last-applied-configuration annotation hold the whole object again, per job, for as long as it exists).
_METADATA = ("name", "namespace", "uid", "generation", "labels", "annotations", "deletionTimestamp")
_BOOKKEEPING_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", "aidi.io/last-handled-configuration")


def lean(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """The parts of a TrainJob the reconcile reads (not copied: see ``IndexedJob``)."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in _METADATA if k in meta}
    if kept.get("annotations"):
        kept["annotations"] = {k: v for k, v in kept["annotations"].items() if k not in _BOOKKEEPING_ANNOTATIONS}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept,
            "spec": body.get("spec"), "status": body.get("status")}


@dataclass(frozen=True, slots=True)
class IndexedJob:
    """A TrainJob as the index keeps it: the parts a reconcile reads, as JSON text. ~1 KB a job, where the
    same as dicts took ~4 KB (20 MB at 5,000 jobs); decoding it for a reconcile takes some 20 µs. Also the
    copy: kopf reuses nothing of the body it passes, and every reconcile gets a dict of its own."""

    rest: bytes  # apiVersion, kind, the metadata kept, spec
    status: bytes

    @classmethod
    def of(cls, body: kopf.Body | dict[str, Any]) -> IndexedJob:
        kept = lean(body)
        status = kept.pop("status")
        return cls(json.dumps(kept).encode(), json.dumps(status).encode())

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.rest)
        body["status"] = json.loads(self.status)
        return body


# Async: a sync index function costs a hop through kopf's thread pool on every event.
@kopf.index(*RESOURCE)
async def trainjob_index(namespace: str | None, name: str, body: kopf.Body,
                         **_: Any) -> dict[JobKey, IndexedJob]:
    return {job_key(namespace, name): IndexedJob.of(body)}


@kopf.on.event(*RESOURCE)
async def on_trainjob_event(event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body,
                            memo: kopf.Memo, **_: Any) -> None:
    """Every change of a TrainJob — and, when the operator starts, every existing one — reconciles it.

    Only event handlers, no kopf change handlers: those would write kopf's bookkeeping annotations on
    every job (a write and one more event per job) and make kopf diff every body. The reconcile works
    from the current state anyway, and retries are ours (``reconcile_or_retry``).
    Deletion: the garbage collector removes the children of a TrainJob; we do too, without waiting.
    """
    state, key = state_of(memo), job_key(namespace, name)
    state.indexed = True
    if event.get("type") == "DELETED":
        async with state.lock(key):
            await delete_children(state, *key)
        state.forget(key)
        return
    if _own_echo(state, key, body):
        _echo_seen(state, key)
        return
    if state.pod_watch is not None and not state.pod_watch.synced(key[0]):
        await state.pod_watch.wait_synced(key[0], PODS_LISTED_WAIT)
    # Now, through the wake-ups and their bound on reconciles at once (``wakeups``), from the body as indexed by
    # then (kopf indexes before calling handlers). Not awaited here: a job waiting its turn is a key in a heap,
    # where kopf's handler would hold its event and its own bookkeeping, ~40 KB a job, thousands in a burst.
    state.wake(key, 0)


def _echo_seen(state: OperatorState, key: JobKey) -> None:
    """The job's new body only carries the status its last reconcile wrote: that reconcile still stands for
    the resync (else every job's last write would cost it one more reconcile in the next pass), and the
    indexed body is now as fresh as what we wrote (no need to keep that at 5,000 jobs)."""
    last, now = state.reconciled.get(key), _inputs(state, key)
    state.statuses.pop(key, None)
    if (last is not None and len(last) == len(now) and all(a is b for a, b in zip(last[1:], now[1:], strict=True))
            and last[0].rest == now[0].rest):  # a server without generations (kmock): compare the rest
        state.reconciled[key] = now


def _own_echo(state: OperatorState, key: JobKey, body: kopf.Body) -> bool:
    """The event only shows our own last status write: the spec is the one that status was decided for."""
    uid, written = state.statuses.get(key, (None, None))
    meta = body.get("metadata") or {}
    return (written is not None and uid == meta.get("uid") and body.get("status") == written
            and written.get("observedGeneration") == meta.get("generation"))


@kopf.on.startup()
async def start_background(memo: kopf.Memo, **_: Any) -> None:
    """Every pod of ours is listed before kopf delivers the first TrainJob event (kopf starts watching once
    the startup handlers are done): a restarted operator sees the pods it made before deciding anything."""
    state = state_of(memo)
    state.pods = PodIndex()
    state.pod_watch = PodWatch(_api(state), state.settings.namespaces, state.pods,
                               lambda key: pod_changed(state, key))
    await state.pod_watch.start()
    state.tasks.append(asyncio.create_task(wakeups(state), name="aidi wake-ups"))
    state.tasks.append(asyncio.create_task(resync(state), name="aidi resync"))
    state.tasks.append(asyncio.create_task(progress.progress_loop(state, _indexed_job, _write_status),
                                           name="aidi progress"))


async def reconcile_or_retry(state: OperatorState, key: JobKey) -> None:
    """Reconcile; what may heal (the API server busy or refusing for now) is retried after its delay."""
    try:
        await reconcile(state, key)
    except kopf.TemporaryError as exc:
        log.warning(f"{key[0]}/{key[1]}: {exc}; retrying in {exc.delay or CREATE_RETRY_DELAY:.0f} s")
        state.wake(key, exc.delay or CREATE_RETRY_DELAY)
    except Exception:
        log.exception(f"{key[0]}/{key[1]}: reconcile failed; retrying in {CREATE_RETRY_DELAY:.0f} s")
        state.wake(key, CREATE_RETRY_DELAY)


def pod_changed(state: OperatorState, key: JobKey) -> None:
    """A pod of the job changed: reconcile the job shortly (``POD_CHANGE_DELAY``), once for all changes by then.

    Not before kopf has indexed every TrainJob: the job's own first event reconciles it then (before, a
    pod's job may not be known yet).
    """
    if not state.indexed:
        return
    delay = POD_CHANGE_DELAY
    settling = state.settling.get(key)
    if settling is not None:
        # A new job's first status waits for its pods' first changes anyway: one reconcile at the window's end.
        delay = max(delay, settling.window_end - asyncio.get_running_loop().time())
    state.wake(key, delay)


async def wakeups(state: OperatorState) -> None:
    """Reconcile each job when it is due: a TrainJob event, a pod change, its next deadline, TTL or retry;
    nothing on a timer for jobs with none. Each in its own task, so that one job's slow API call does not hold
    up the others' (a job's reconciles never overlap: they take its lock), at most ``RECONCILE_WORKERS`` at once,
    as Kubernetes' own controllers run a fixed number of workers: when the API server is the bottleneck (5,000
    2-worker jobs, 25,000 pods on two cores) every job past them would otherwise hold its pods' manifests
    waiting for a connection — 708 MB at the peak, measured — where a job waiting here is an entry in the heap."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        if len(running) == RECONCILE_WORKERS:
            state.due_changed.set()  # the loop waits for a free worker: what is due may start now
        running.discard(task)

    try:
        while True:
            now = loop.time()
            while state.due_heap and len(running) < RECONCILE_WORKERS:
                when, key = state.due_heap[0]
                if state.due.get(key) != when:
                    # Stale (moved earlier or forgotten since): dropped now rather than woken for. A new job
                    # whose pods' verdicts came leaves one at its first-status limit: 5,000 wake-ups of this
                    # loop for nothing, 2 % of a core over the minute after a burst of 5,000 jobs.
                    heapq.heappop(state.due_heap)
                    continue
                if when > now:
                    break
                heapq.heappop(state.due_heap)
                del state.due[key]
                task = asyncio.create_task(reconcile_or_retry(state, key))
                running.add(task)
                task.add_done_callback(done)
            state.due_changed.clear()
            free = len(running) < RECONCILE_WORKERS
            timeout = state.due_heap[0][0] - loop.time() if state.due_heap and free else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.due_changed.wait(), timeout)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def resync(state: OperatorState) -> None:
    """A safety net: reconcile every job now and then, in case an event was missed.

    A plain task rather than kopf timers, because kopf puts a finalizer on objects with timers, and a
    finalizer would block deleting TrainJobs while the operator is down.
    """
    while True:
        await asyncio.sleep(state.settings.resync_seconds)
        if not state.indexed:
            continue  # before kopf has indexed every pod, a job's pods could look missing
        for key in list(state.jobs or {}):
            # A job whose body and pods are the very objects its last reconcile saw has nothing new to
            # tell (what time alone changes is woken from the heap): at 5,000 jobs, a pass over all of them
            # would otherwise be seconds of CPU every few minutes with nothing changing.
            if not _unchanged(state, key):
                await reconcile_or_retry(state, key)
            await asyncio.sleep(0)  # a job with nothing to do awaits nothing: let events in between


def _inputs(state: OperatorState, key: JobKey) -> tuple[Any, ...]:
    """The indexed objects a reconcile of ``key`` reads now (kopf replaces an object's entry on each event)."""
    return (*(state.jobs or {}).get(key, []), *state.pods_of(key))


def _unchanged(state: OperatorState, key: JobKey) -> bool:
    """The same objects, by identity, as the job's last successful reconcile read (kept referenced there, so
    that no new object can reuse an old one's identity)."""
    last, now = state.reconciled.get(key), _inputs(state, key)
    return last is not None and len(last) == len(now) and all(a is b for a, b in zip(last, now, strict=True))


def _indexed_job(state: OperatorState, key: JobKey) -> dict[str, Any] | None:
    job: IndexedJob
    for job in (state.jobs or {}).get(key, []):
        return job.body()
    return None


async def reconcile(state: OperatorState, key: JobKey) -> None:
    """Bring one job's children and status in line with its spec, from the current state (the indexed body)."""
    async with state.lock(key):
        inputs = _inputs(state, key)
        state.reconciled.pop(key, None)
        body = _indexed_job(state, key)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        if state.pod_watch is None or not state.pod_watch.synced(key[0]):
            # Unlisted pods would look lost, and be made again.
            raise kopf.TemporaryError(f"the pods in namespace {key[0]} are not listed yet", delay=1)
        if awaiting_own_pods(state, key):
            return
        await _reconcile_locked(state, key, body)
        state.reconciled[key] = inputs


def awaiting_own_pods(state: OperatorState, key: JobKey) -> bool:
    """Whether pods this operator just created are not in the pod watch's view yet: a reconcile then would
    take them for missing and create them again — a third of the jobs did so in a burst of 1,000 (with, then,
    their Service and NetworkPolicy: three refused writes each time). Kubernetes' own controllers wait for their
    "expectations" the same way. The pods' arrival wakes the job; past ``OWN_PODS_WAIT`` they count as lost."""
    expected = state.expected.get(key)
    if expected is None:
        return False
    pods, until = expected
    now = asyncio.get_running_loop().time()
    seen = {(p.name, p.attempt) for p in state.pods_of(key)}
    if pods <= seen or now >= until:
        del state.expected[key]
        return False
    state.wake(key, until - now)
    return True


async def _reconcile_locked(state: OperatorState, key: JobKey, body: dict[str, Any]) -> None:
    namespace, name = key
    meta = body.get("metadata", {})
    now = dt.datetime.now(dt.UTC)
    uid = meta.get("uid")
    cached_uid, cached = state.statuses.get(key, (None, None))
    # Our last write is fresher than the indexed body, unless the job is another one of the same name.
    old_wire = cached if cached is not None and cached_uid == uid else body.get("status") or {}
    settling = state.settling.get(key)
    if settling is not None and settling.uid != uid:
        settling = None
    try:
        status = (tj.TrainJobStatus.model_validate_json(settling.status) if settling is not None
                  else tj.TrainJobStatus.model_validate(old_wire))
    except ValidationError:
        status = tj.TrainJobStatus()  # written by someone else in a shape we do not know: start over
    try:
        job = tj.TrainJob.model_validate({k: v for k, v in body.items() if k in ("apiVersion", "kind", "spec")}
                                         | {"metadata": _user_metadata(meta, namespace, name)})
    except ValidationError as exc:
        await _write_status(state, key, body, old_wire, _invalid(status, exc, now, meta.get("generation")))
        return

    pods = list(state.pods_of(key))
    plan = lifecycle.decide(job, status, pods, now, meta.get("generation"))
    api = _api(state)
    await asyncio.gather(*(api.delete(core_path(namespace, "pods", pod)) for pod in plan.delete))
    refused = None
    placed = _placed_children_due(state, key, uid, pods, plan)
    if plan.create or placed:
        refused = await _create_children(state, job, uid, plan, placed)
    if plan.failed_pod:
        await _keep_log_tail(state, key, plan)
    if _settles(state, key, uid, old_wire, plan, refused, settling, pods):
        pass  # written once the new pods' first changes are in (a pod's change or the wake-up wakes the job)
    else:
        state.settling.pop(key, None)
        await _write_status(state, key, body, old_wire, plan.status)
    await post_events(api, body, plan.events)
    if plan.wake_at is not None:
        state.wake(key, (plan.wake_at - now).total_seconds())
    if plan.delete_job:
        await delete_children(state, namespace, name)
        await api.delete(trainjob_path(namespace, name))
        log.info(f"{namespace}/{name}: deleted, {job.spec.ttl_seconds_after_finished} s after it finished")
    if refused:
        raise kopf.TemporaryError(refused, delay=CREATE_RETRY_DELAY)


def _settles(state: OperatorState, key: JobKey, uid: str | None, written: dict[str, Any], plan: lifecycle.Plan,
             refused: str | None, settling: Settling | None, pods: list[lifecycle.PodState]) -> bool:
    """Whether a brand-new job's status waits before it is written.

    Its pods' first changes (created, then placed or found unschedulable, often running) follow, each a
    status change: written as they come they cost a write and one more event each, per job, when jobs are
    submitted by the hundred. So the first status waits ``STATUS_SETTLE_SECONDS``, and then until the
    scheduler has given every pod its verdict, at most ``first_status_wait_seconds``. In a burst of jobs the
    verdicts trail the pods (by up to 85 s at the end of 5,000 jobs back to back): the wait saves each job a
    second status write, and the control plane that work while it is still making pods (p99 create → pods
    of 1,000 1-worker jobs 0.37-0.58 s → 0.19-0.26 s, of 5,000 1.02 s → 0.39-0.54 s; docs/benchmarks.md).
    Only a job never written before, on its first attempt, settles — whatever else happens (a failure, a
    refused creation, the wait over) is written at once, and an operator stopped meanwhile loses nothing it
    cannot see again.
    """
    now = asyncio.get_running_loop().time()
    if plan.status.restarts or plan.failed_pod or plan.delete_job or plan.status.phase in lifecycle.FINISHED:
        return False
    if settling is not None:
        judged = all(p.scheduled or p.unschedulable for p in pods)
        if now >= settling.give_up or (now >= settling.window_end and judged):
            return False
        state.settling[key] = settling._replace(status=json.dumps(plan.status.to_wire()).encode())
        # An earlier wake-up (a pod's change) may have taken the one planned; a verdict still to come wakes the
        # job through its pod's change.
        state.wake(key, (settling.window_end if now < settling.window_end else settling.give_up) - now)
        return True
    if plan.create and refused is None and not written.get("phase"):
        give_up = now + max(STATUS_SETTLE_SECONDS, state.settings.first_status_wait_seconds)
        state.settling[key] = Settling(uid, now + STATUS_SETTLE_SECONDS, give_up,
                                       json.dumps(plan.status.to_wire()).encode())
        state.wake(key, STATUS_SETTLE_SECONDS)
        return True
    return False


def _user_metadata(meta: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {}}


def _invalid(status: tj.TrainJobStatus, exc: ValidationError, now: dt.datetime,
             generation: int | None) -> tj.TrainJobStatus:
    problems = "; ".join(str(e) for e in from_pydantic(exc, tj.TrainJob))
    message = f"invalid spec: {problems}. Fix the TrainJob (kubectl edit trainjob) and the operator retries."
    st = status.model_copy(deep=True)
    st.phase, st.reason, st.message, st.observed_generation = "Failed", "InvalidSpec", message, generation
    lifecycle.set_condition(st, "Failed", True, "InvalidSpec", message, now)
    return st


def _api(state: OperatorState) -> KubeApi:
    if state.api is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return state.api


def _placed_children_due(state: OperatorState, key: JobKey, uid: str | None, pods: list[lifecycle.PodState],
                         plan: lifecycle.Plan) -> bool:
    """Whether to make what a job needs only once its pods are on nodes: now, when the first one is placed.

    That is the job's own NetworkPolicy (its pods may reach each other; until then the namespace's isolation
    policy closes them) and a parameter-server job's headless Service (its pods' DNS names, which resolve only
    once a pod has an IP, after it is placed). A job waiting for nodes needs neither: at 1,000 queued jobs they
    would be 1,000 policies, 1,000 Services and the endpoint objects the controllers write for each, all work
    for the control plane and nothing for the jobs.
    """
    return (state.placed.get(key, "") != uid and plan.status.phase not in lifecycle.FINISHED
            and any(p.scheduled for p in pods))


async def _create_children(state: OperatorState, job: tj.TrainJob, uid: str | None,
                           plan: lifecycle.Plan, placed: bool = False) -> str | None:
    """Create the missing pods (with their PodGroup) and, if ``placed``, what the job needs once a pod is on a
    node (``_placed_children_due``); "already exists" is success.

    Returns the API server's refusal, if any, after putting it in the plan's status: a missing
    PriorityClass or an exceeded quota is something the user must see, and it may heal.
    """
    api = _api(state)
    namespace = job.metadata.namespace or "default"
    try:
        if placed:
            service = podspec.build_service(job, uid)
            await asyncio.gather(netpol.create(api, job, uid),
                                 *([api.create(core_path(namespace, "services"), service)] if service else []))
            state.placed[(namespace, job.metadata.name)] = uid
        if not plan.create:
            return None
        group = podspec.build_podgroup(job, uid)
        if group is not None:  # first: a gang scheduler binds a pod only once it sees the pod's group
            await api.create(group_path(podspec.PODGROUP_API_VERSION, namespace, "podgroups"), group)
        # Before the pods, so that none of them is ever open to the whole cluster (at once, but for the
        # first job in a namespace).
        await state.isolation.ensure(api, namespace)
        creates = [(core_path(namespace, "pods"), podspec.build_pod(
            job, m, state.settings.pods, attempt=plan.status.restarts, owner_uid=uid,
            deadline_seconds=plan.deadline_left)) for m in plan.create]
        made = frozenset((body["metadata"]["name"], plan.status.restarts) for _, body in creates)
        await asyncio.gather(*(api.create(path, body) for path, body in creates))
        state.expected[(namespace, job.metadata.name)] = (made, asyncio.get_running_loop().time() + OWN_PODS_WAIT)
    except ApiRefused as exc:
        st = plan.status
        message = f"cannot create the job's pods: {exc} (retrying every {CREATE_RETRY_DELAY:.0f} s)"
        st.phase, st.reason, st.message = "Pending", "CreateFailed", message
        lifecycle.set_condition(st, "Created", False, "CreateFailed", message, dt.datetime.now(dt.UTC))
        plan.events.append(("Warning", "CreateFailed", message))
        return message
    return None


async def _keep_log_tail(state: OperatorState, key: JobKey, plan: lifecycle.Plan) -> None:
    """The failed pod's last log lines go into status.lastFailure and an Event: pods do not last."""
    failure = plan.status.last_failure
    if failure is None or plan.failed_pod is None:
        return
    container = podspec.MAIN_CONTAINER
    for pod in state.pods_of(key):
        if pod.name == plan.failed_pod and pod.failure is not None and pod.failure.container:
            container = pod.failure.container
    text = await _api(state).text(core_path(key[0], "pods", plan.failed_pod, "log"),
                                  {"container": container, "tailLines": str(state.settings.log_tail_lines)})
    if text:
        lines = text.splitlines()[-state.settings.log_tail_lines:]
        failure.log_tail = "\n".join(lines)
        plan.events.append(("Warning", "PodFailed", f"{failure.message}; last log lines of {container}:\n"
                                                    + "\n".join(lines[-10:])))


async def _write_status(state: OperatorState, key: JobKey, body: dict[str, Any], old: dict[str, Any],
                        status: tj.TrainJobStatus) -> None:
    """Merge-patch the status subresource when it changed (keys that disappeared are sent as null)."""
    new = status.to_wire()
    if new == old:
        return
    patch: dict[str, Any] = {k: None for k in old if k not in new} | new
    if await _api(state).patch(trainjob_path(*key, sub="status"), {"status": patch}):
        state.statuses[key] = (body.get("metadata", {}).get("uid"), new)


async def delete_children(state: OperatorState, namespace: str, name: str) -> None:
    """Delete a job's pods, Service and PodGroup (the garbage collector would, via ownerReferences)."""
    api = _api(state)
    pods = {p.name for p in state.pods_of((namespace, name))}
    pods |= {p["metadata"]["name"] for p in await api.list(core_path(namespace, "pods"),
                                                         {podspec.LABEL_JOB: name})}
    await asyncio.gather(
        *(api.delete(core_path(namespace, "pods", pod)) for pod in sorted(pods)),
        api.delete(core_path(namespace, "services", name)),
        _delete_podgroup(api, namespace, name),
        netpol.delete(api, namespace, name),
    )


async def _delete_podgroup(api: KubeApi, namespace: str, name: str) -> None:
    # No Volcano in this cluster (or no RBAC for it): then nothing of ours can be there.
    with contextlib.suppress(ApiRefused):
        await api.delete(group_path(podspec.PODGROUP_API_VERSION, namespace, "podgroups", name))


async def post_events(api: KubeApi, body: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
    """Kubernetes Events on the TrainJob (`kubectl describe`), from any task: kopf's posting works only
    inside its handlers. A refused Event (the namespace being deleted) loses nothing else."""
    if not events:
        return
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    now = lifecycle.timestamp(dt.datetime.now(dt.UTC))
    involved = {"apiVersion": tj.API_VERSION, "kind": tj.KIND, "name": meta.get("name"), "namespace": namespace,
                "uid": meta.get("uid")}

    async def post(type_: str, reason: str, message: str) -> None:
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
                 "involvedObject": involved, "type": type_, "reason": reason,
                 "message": message[:MAX_EVENT_MESSAGE], "source": {"component": EVENT_SOURCE},
                 "reportingComponent": EVENT_SOURCE, "reportingInstance": socket.gethostname(),
                 "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            await api.create(core_path(namespace, "events"), event)
        except (ApiRefused, kopf.TemporaryError) as exc:
            log.warning(f"{namespace}/{meta.get('name')}: event {reason} not posted: {exc}")

    await asyncio.gather(*(post(*e) for e in events))
