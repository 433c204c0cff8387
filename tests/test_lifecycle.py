"""The lifecycle decisions (aidi.jobs.lifecycle, shared by both runners) as a pure function: pod states in,
plan and user-facing messages out."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aidi.api import trainjob as tj
from aidi.jobs.lifecycle import decide, pod_state

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def job(**spec: Any) -> tj.TrainJob:
    body = {"command": ["python", "train.py"]} | spec
    return tj.TrainJob.model_validate({"metadata": {"name": "j", "namespace": "ns"}, "spec": body})


def pod(name: str, phase: str = "Running", attempt: int = 0, **status: Any) -> dict[str, Any]:
    role, _, index = name.removeprefix("j-").partition("-")
    return {"metadata": {"name": name, "labels": {"aidi.io/role": role, "aidi.io/index": index or "0",
                                                  "aidi.io/attempt": str(attempt)}},
            "status": {"phase": phase} | status}


def terminated(code: int, reason: str = "Error", container: str = "trainer") -> dict[str, Any]:
    return {"containerStatuses": [{"name": container, "state": {"terminated": {"exitCode": code, "reason": reason}}}]}


def running_status() -> tj.TrainJobStatus:
    return tj.TrainJobStatus(phase="Running", start_time="2026-11-26T11:00:00Z")


def test_new_job_creates_every_pod_and_starts_the_clock() -> None:
    plan = decide(job(workers={"min": 2, "max": 2}), tj.TrainJobStatus(), [], NOW, generation=4)
    assert [m.pod_name("j") for m in plan.create] == ["j-scheduler", "j-server-0", "j-server-1", "j-worker-0",
                                                      "j-worker-1"]
    st = plan.status
    assert st.phase == "Pending" and st.start_time == "2026-11-26T12:00:00Z" and st.observed_generation == 4
    assert st.workers.pending == 2 and st.servers.pending == 2 and st.scheduler.pending == 1
    created = st.conditions[0]
    assert (created.type, created.status, created.message) == (
        "Created", "True", "created 2 workers, 2 parameter servers and a scheduler")


def test_pending_messages_say_why() -> None:
    unschedulable = pod("j-worker-0", "Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    plan = decide(job(), tj.TrainJobStatus(), [pod_state(unschedulable)], NOW)
    assert plan.status.message == "worker-0 cannot be scheduled: 0/3 nodes are available: 3 Insufficient " \
                                  "nvidia.com/gpu."
    pulling = pod("j-worker-0", "Pending", containerStatuses=[{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "aidi/jobimage:9"'}}}])
    plan = decide(job(), tj.TrainJobStatus(), [pod_state(pulling)], NOW)
    assert plan.status.reason == "ImagePullBackOff"
    assert plan.status.message == ('worker-0 cannot pull image (ImagePullBackOff in trainer): '
                                   'Back-off pulling image "aidi/jobimage:9"')


def test_oom_killed_worker_restarts_the_gang_and_counts_it() -> None:
    spec = job(workers={"min": 2, "max": 2}, parameterServers=1, backoffLimit=2)
    pods = [pod_state(pod(n)) for n in ("j-scheduler", "j-server-0", "j-worker-0")]
    pods.append(pod_state(pod("j-worker-1", "Failed", **terminated(137, "OOMKilled"))))
    plan = decide(spec, running_status(), pods, NOW)
    st = plan.status
    assert st.phase == "Restarting" and st.restarts == 1
    assert st.message == ("worker-1 ran out of memory (OOMKilled): exited with code 137; restarting the whole "
                          "gang (restart 1 of 2)")
    assert sorted(plan.delete) == ["j-scheduler", "j-server-0", "j-worker-0", "j-worker-1"]
    assert st.last_failure.pod == "j-worker-1" and st.last_failure.exit_code == 137
    assert plan.failed_pod == "j-worker-1" and not plan.create

    # Deciding again on the same (now stale) pods neither counts the failure twice nor creates anything.
    again = decide(spec, st, pods, NOW)
    assert again.status.restarts == 1 and not again.create
    # Once the old pods are gone, the whole gang comes back with the new attempt label.
    fresh = decide(spec, st, [], NOW)
    assert len(fresh.create) == 4 and fresh.status.message.startswith("restart 1 of 2: ")


def test_exit_code_policy_restarts_only_killed_workers() -> None:
    spec = job(restartPolicy="ExitCode", backoffLimit=3)
    killed = decide(spec, running_status(), [pod_state(pod("j-worker-0", "Failed", **terminated(143)))], NOW)
    assert killed.status.phase == "Restarting"
    crashed = decide(spec, running_status(), [pod_state(pod("j-worker-0", "Failed", **terminated(1)))], NOW)
    assert crashed.status.phase == "Failed" and crashed.status.reason == "WorkerFailed"
    assert crashed.status.message == "worker-0 exited with code 1; restartPolicy ExitCode does not restart it"


def test_never_policy_fails_at_once_and_keeps_finished_pods_per_clean_policy() -> None:
    spec = job(workers={"min": 2, "max": 2}, restartPolicy="Never", cleanPodPolicy="Running")
    pods = [pod_state(pod(n)) for n in ("j-scheduler", "j-server-0", "j-server-1", "j-worker-0")]
    pods.append(pod_state(pod("j-worker-1", "Failed", **terminated(2))))
    plan = decide(spec, running_status(), pods, NOW)
    assert plan.status.phase == "Failed" and plan.status.completion_time == "2026-11-26T12:00:00Z"
    assert "j-worker-1" not in plan.delete and "j-worker-0" in plan.delete


def test_fetch_failure_names_the_init_container() -> None:
    failed = pod("j-worker-0", "Failed", initContainerStatuses=[
        {"name": "fetch-code", "state": {"terminated": {"exitCode": 6, "reason": "Error"}}}])
    plan = decide(job(restartPolicy="Never"), running_status(), [pod_state(failed)], NOW)
    assert plan.status.message.startswith("worker-0 exited with code 6 in fetch-code;")


def test_trainer_exit_counts_even_while_the_sync_container_still_runs() -> None:
    # cgroup OOM kills the whole trainer container: the pod stays Running until the sync step gives up.
    status = {"containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
        {"name": "sync-output", "state": {"running": {}}}]}
    plan = decide(job(backoffLimit=0), running_status(), [pod_state(pod("j-worker-0", "Running", **status))], NOW)
    assert plan.status.phase == "Failed" and plan.status.reason == "BackoffLimitExceeded"


def test_a_pod_deleted_from_a_running_gang_restarts_it() -> None:
    spec = job(workers={"min": 2, "max": 2}, parameterServers=1)
    pods = [pod_state(pod(n)) for n in ("j-scheduler", "j-server-0", "j-worker-0")]  # worker-1 was preempted
    plan = decide(spec, running_status(), pods, NOW)
    assert plan.status.phase == "Restarting" and plan.status.last_failure.reason == "PodDeleted"


def test_deadline_fails_the_job_and_stops_its_pods() -> None:
    status = tj.TrainJobStatus(phase="Running", start_time="2026-11-26T11:00:00Z")
    plan = decide(job(activeDeadlineSeconds=3600), status, [pod_state(pod("j-worker-0"))], NOW)
    assert plan.status.phase == "Failed" and plan.status.reason == "DeadlineExceeded"
    assert plan.delete == ["j-worker-0"]
    early = decide(job(activeDeadlineSeconds=3601), status, [pod_state(pod("j-worker-0"))], NOW)
    assert early.status.phase == "Running"


def test_ttl_deletes_only_after_it_passed() -> None:
    done = tj.TrainJobStatus(phase="Succeeded", completion_time="2026-11-26T11:59:00Z")
    assert decide(job(ttlSecondsAfterFinished=60), done, [], NOW).delete_job
    assert not decide(job(ttlSecondsAfterFinished=61), done, [], NOW).delete_job
    assert not decide(job(), done, [], NOW).delete_job


def test_condition_transition_time_moves_only_on_a_flip() -> None:
    first = decide(job(), tj.TrainJobStatus(), [pod_state(pod("j-worker-0"))], NOW).status
    later = NOW + dt.timedelta(minutes=5)
    second = decide(job(), first, [pod_state(pod("j-worker-0"))], later).status
    running = next(c for c in second.conditions if c.type == "Running")
    assert running.last_transition_time == "2026-11-26T12:00:00Z"
    # ... and does move when it flips: the worker finishes, Running turns False at that moment.
    finished = NOW + dt.timedelta(minutes=9)
    third = decide(job(), second, [pod_state(pod("j-worker-0", "Succeeded", **terminated(0, "Completed")))],
                   finished).status
    running = next(c for c in third.conditions if c.type == "Running")
    assert running.status == "False" and running.last_transition_time == "2026-11-26T12:09:00Z"


def _resumed_pod(message: str, attempt: int = 1) -> dict[str, Any]:
    return pod("j-worker-0", "Running", attempt, initContainerStatuses=[
        {"name": "fetch-code", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "fetch-checkpoint", "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                              "message": message}}}])


def test_the_status_says_which_checkpoint_the_gang_resumed_from() -> None:
    restarted = tj.TrainJobStatus(phase="Pending", restarts=1, start_time="2026-11-26T11:00:00Z")
    restored = '{"checkpoint": 7, "attempt": 0, "summary": "step fusion-bn-c1 after epoch 3"}'
    plan = decide(job(), restarted, [pod_state(_resumed_pod(restored))], NOW)
    st = plan.status
    assert st.resumed is not None and st.resumed.checkpoint == 7 and st.resumed.attempt == 0
    assert st.resumed.message == "resumed step fusion-bn-c1 after epoch 3 from attempt 0's checkpoint"
    assert st.phase == "Running"
    assert st.message == "1/1 worker running; resumed step fusion-bn-c1 after epoch 3 from attempt 0's checkpoint"
    assert ("Normal", "Resumed", st.resumed.message) in plan.events
    # Deciding again on the same pods says it once.
    assert not [e for e in decide(job(), st, [pod_state(_resumed_pod(restored))], NOW).events if e[1] == "Resumed"]
    # Nothing restored (a first run), or a message that is not the restore step's: nothing said.
    for message in ("", "garbage"):
        assert decide(job(), restarted, [pod_state(_resumed_pod(message))], NOW).status.resumed is None
    # The next restart forgets it: the new gang says what it restored.
    failed = pod("j-worker-0", "Failed", 1, **terminated(137))
    again = decide(job(), st, [pod_state(failed)], NOW).status
    assert again.restarts == 2 and again.resumed is None


def test_a_dead_parameter_server_or_scheduler_restarts_the_gang_at_once() -> None:
    spec = job(workers={"min": 2, "max": 2}, parameterServers=1)
    names = ("j-scheduler", "j-server-0", "j-worker-0", "j-worker-1")
    # A server process that died: its pod failed while the workers wait on it.
    pods = [pod_state(pod(n)) for n in names if n != "j-server-0"]
    pods.append(pod_state(pod("j-server-0", "Failed", **terminated(137))))
    plan = decide(spec, running_status(), pods, NOW)
    assert plan.status.phase == "Restarting" and sorted(plan.delete) == sorted(names)
    assert plan.status.message == "server-0 exited with code 137; restarting the whole gang (restart 1 of 3)"
    # The scheduler deleted (node drained, evicted) before the whole gang ran: the running worker joined it.
    starting = tj.TrainJobStatus(phase="Pending", start_time="2026-11-26T11:00:00Z")
    scheduler = pod("j-scheduler") | {"metadata": pod("j-scheduler")["metadata"] | {
        "deletionTimestamp": "2026-11-26T11:59:00Z"}}
    pods = [pod_state(scheduler), pod_state(pod("j-server-0")), pod_state(pod("j-worker-0")),
            pod_state(pod("j-worker-1", "Pending"))]
    plan = decide(spec, starting, pods, NOW)
    assert plan.status.phase == "Restarting" and plan.status.last_failure.pod == "j-scheduler"
    assert plan.status.last_failure.reason == "PodDeleted"
    # Before any pod started nobody joined it: the pod is simply made again once gone.
    waiting = [pod_state(scheduler)] + [pod_state(pod(n, "Pending")) for n in names[1:]]
    assert decide(spec, starting, waiting, NOW).status.phase == "Pending"
