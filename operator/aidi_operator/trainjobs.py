"""TrainJob handlers: every event, a pod change or the periodic resync runs one idempotent reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
from typing import Any, cast

import kopf
from pydantic import ValidationError

from aidi.api import trainjob as tj
from aidi.api.errors import from_pydantic
from aidi.jobs import lifecycle, podspec
from aidi_operator.kube import ApiRefused, KubeApi, core_path, group_path, trainjob_path
from aidi_operator.startup import JobKey, OperatorState, job_key, state_of

log = logging.getLogger(__name__)
RESOURCE = (tj.GROUP, tj.VERSION, tj.PLURAL)
CREATE_RETRY_DELAY = 10.0
MAX_EVENT_MESSAGE = 1000  # the API server truncates Event messages at 1 KiB


@kopf.index(*RESOURCE)
def trainjob_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[JobKey, dict[str, Any]]:
    return {job_key(namespace, name): copy.deepcopy(dict(body))}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_trainjob(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    state.indexed = True
    await reconcile(state, job_key(namespace, name), copy.deepcopy(dict(body)))


@kopf.on.event(*RESOURCE)
async def on_trainjob_event(event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo,
                            **_: Any) -> None:
    """Deletion: the garbage collector removes the children of a TrainJob; we do too, without waiting."""
    if event.get("type") != "DELETED":
        return
    state, key = state_of(memo), job_key(namespace, name)
    async with state.lock(key):
        await delete_children(state, *key)
    state.forget(key)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    state.tasks.append(asyncio.create_task(resync(state), name="aidi resync"))


async def resync(state: OperatorState) -> None:
    """Reconcile every job now and then: deadlines and TTLs expire without any event announcing it.

    A plain task rather than kopf timers, because kopf puts a finalizer on objects with timers, and a
    finalizer would block deleting TrainJobs while the operator is down.
    """
    while True:
        await asyncio.sleep(state.settings.resync_seconds)
        if not state.indexed:
            continue  # before kopf has indexed every pod, a job's pods could look missing
        for key in list(state.jobs or {}):
            try:
                await reconcile(state, key)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning(f"{key[0]}/{key[1]}: {exc}")
            except Exception:
                log.exception(f"{key[0]}/{key[1]}: reconcile failed; retrying at the next resync")


def _indexed_job(state: OperatorState, key: JobKey) -> dict[str, Any] | None:
    body: dict[str, Any]
    for body in (state.jobs or {}).get(key, []):
        return body
    return None


async def reconcile(state: OperatorState, key: JobKey, body: dict[str, Any] | None = None) -> None:
    """Bring one job's children and status in line with its spec, from the current state."""
    async with state.lock(key):
        body = body if body is not None else _indexed_job(state, key)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        await _reconcile_locked(state, key, body)


async def _reconcile_locked(state: OperatorState, key: JobKey, body: dict[str, Any]) -> None:
    namespace, name = key
    meta = body.get("metadata", {})
    now = dt.datetime.now(dt.UTC)
    cached_uid, cached = state.statuses.get(key, (None, None))
    # Our last write is fresher than the indexed body, unless the job is another one of the same name.
    old_wire = cached if cached is not None and cached_uid == meta.get("uid") else body.get("status") or {}
    try:
        status = tj.TrainJobStatus.model_validate(old_wire)
    except ValidationError:
        status = tj.TrainJobStatus()  # written by someone else in a shape we do not know: start over
    try:
        job = tj.TrainJob.model_validate({k: v for k, v in body.items() if k in ("apiVersion", "kind", "spec")}
                                         | {"metadata": _user_metadata(meta, namespace, name)})
    except ValidationError as exc:
        await _write_status(state, key, body, old_wire, _invalid(status, exc, now, meta.get("generation")))
        return

    pods = list((state.pods or {}).get(key, []))
    plan = lifecycle.decide(job, status, pods, now, meta.get("generation"))
    api = _api(state)
    uid = meta.get("uid")
    await asyncio.gather(*(api.delete(core_path(namespace, "pods", pod)) for pod in plan.delete))
    refused = None
    if plan.create:
        refused = await _create_children(state, job, uid, plan)
    if plan.failed_pod:
        await _keep_log_tail(state, key, plan)
    await _write_status(state, key, body, old_wire, plan.status)
    for type_, reason, message in plan.events:
        # The body is the API server's raw object, as kopf.Body wraps it.
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason,
                   message=message[:MAX_EVENT_MESSAGE])
    if plan.delete_job:
        await delete_children(state, namespace, name)
        await api.delete(trainjob_path(namespace, name))
        log.info(f"{namespace}/{name}: deleted, {job.spec.ttl_seconds_after_finished} s after it finished")
    if refused:
        raise kopf.TemporaryError(refused, delay=CREATE_RETRY_DELAY)


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


async def _create_children(state: OperatorState, job: tj.TrainJob, uid: str | None,
                           plan: lifecycle.Plan) -> str | None:
    """Create the missing pods (and their Service/PodGroup); "already exists" is success.

    Returns the API server's refusal, if any, after putting it in the plan's status: a missing
    PriorityClass or an exceeded quota is something the user must see, and it may heal.
    """
    api = _api(state)
    namespace = job.metadata.namespace or "default"
    try:
        group = podspec.build_podgroup(job, uid)
        if group is not None:  # first: a gang scheduler binds a pod only once it sees the pod's group
            await api.create(group_path(podspec.PODGROUP_API_VERSION, namespace, "podgroups"), group)
        # The Service and the pods do not depend on each other (DNS names appear with the pods'
        # endpoints): one round trip for all of them, not one per child.
        creates = [(core_path(namespace, "pods"), podspec.build_pod(
            job, m, state.settings.pods, attempt=plan.status.restarts, owner_uid=uid,
            deadline_seconds=plan.deadline_left)) for m in plan.create]
        service = podspec.build_service(job, uid)
        if service is not None:
            creates.append((core_path(namespace, "services"), service))
        await asyncio.gather(*(api.create(path, body) for path, body in creates))
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
    for pod in (state.pods or {}).get(key, []):
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
    written = await _api(state).patch(trainjob_path(*key, sub="status"), {"status": patch})
    if written is not None:
        state.statuses[key] = (body.get("metadata", {}).get("uid"), new)


async def delete_children(state: OperatorState, namespace: str, name: str) -> None:
    """Delete a job's pods, Service and PodGroup (the garbage collector would, via ownerReferences)."""
    api = _api(state)
    pods = {p.name for p in (state.pods or {}).get((namespace, name), [])}
    pods |= {p["metadata"]["name"] for p in await api.list(core_path(namespace, "pods"),
                                                         {podspec.LABEL_JOB: name})}
    await asyncio.gather(
        *(api.delete(core_path(namespace, "pods", pod)) for pod in sorted(pods)),
        api.delete(core_path(namespace, "services", name)),
        _delete_podgroup(api, namespace, name),
    )


async def _delete_podgroup(api: KubeApi, namespace: str, name: str) -> None:
    # No Volcano in this cluster (or no RBAC for it): then nothing of ours can be there.
    with contextlib.suppress(ApiRefused):
        await api.delete(group_path(podspec.PODGROUP_API_VERSION, namespace, "podgroups", name))
