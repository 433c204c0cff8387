"""One lifecycle, two runners: the same scenario table through the operator (in-process, on kmock, the test
playing the kubelet) and through the local cluster (real processes), comparing what each wrote as the job's
status — phase, reason, message and conditions. Both decide with ``aidi.jobs.lifecycle``; this proves the
local runner maps its processes onto it as the operator maps pods, and that the one difference is the one
documented (docs/local.md: the local runner restarts a gang only when a pod was killed).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tests.support.operator import Cluster, kmock_api, operator_settings, running_operator
from tests.test_local import cli, local_cluster, use_file_dataspace  # noqa: F401 (local_cluster: a fixture)

NAMESPACE = "team-a"
Outcome = tuple[str, str, str]  # phase, reason, message


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: dict[str, Any]
    exit_code: int | None  # what worker-0's trainer does: exit with this code, or (None) run until stopped
    expected: Outcome
    local: Outcome | None = None  # where the local runner differs by design
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, reason), both runners
    # Conditions that depend on timing, not on the rules: left out of the comparison of the two runners.
    timing: tuple[str, ...] = ()


NO_RESTART = ("the local runner restarts a job only when a pod was killed (exit code 128 or above); "
              "backoffLimit applies on a cluster")
SUSPENDED = "the job is suspended; its pods are deleted until spec.suspend is set to false"
SCENARIOS = [
    Scenario("succeeds", {}, 0, ("Succeeded", "AllWorkersSucceeded", "1/1 worker succeeded"),
             conditions={"Created": ("True", "PodsCreated"), "Succeeded": ("True", "AllWorkersSucceeded")}),
    Scenario("fails-never", {"restartPolicy": "Never"}, 3,
             ("Failed", "WorkerFailed", "worker-0 exited with code 3; restartPolicy Never does not restart it"),
             conditions={"Failed": ("True", "WorkerFailed")}),
    Scenario("fails-exit-code", {"restartPolicy": "ExitCode"}, 2,
             ("Failed", "WorkerFailed", "worker-0 exited with code 2; restartPolicy ExitCode does not restart it")),
    # Killed from outside: both runners restart the gang within backoffLimit (the local one only then).
    Scenario("killed", {"backoffLimit": 0}, 137,
             ("Failed", "BackoffLimitExceeded",
              "worker-0 exited with code 137; backoffLimit (0) reached after 0 restarts")),
    Scenario("fails-by-itself", {"backoffLimit": 0}, 3,
             ("Failed", "BackoffLimitExceeded",
              "worker-0 exited with code 3; backoffLimit (0) reached after 0 restarts"),
             local=("Failed", "WorkerFailed", f"worker-0 exited with code 3; {NO_RESTART}")),
    Scenario("deadline", {"activeDeadlineSeconds": 2}, None,
             ("Failed", "DeadlineExceeded",
              "the job ran longer than activeDeadlineSeconds (2 s); its pods were stopped"),
             conditions={"Failed": ("True", "DeadlineExceeded")},
             # Whether the worker was seen running before the 2 s ran out depends on the machine's load.
             timing=("Running",)),
    Scenario("suspended", {"suspend": True}, None, ("Suspended", "Suspended", SUSPENDED),
             conditions={"Suspended": ("True", "Suspended")}),
]


def _outcome(status: dict[str, Any]) -> Outcome:
    return status.get("phase", ""), status.get("reason", ""), status.get("message", "")


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def _command(s: Scenario) -> list[str]:
    # Running for a moment first, as the test's kubelet reports the operator's pods Running before they end.
    return ["bash", "-c", "sleep 60" if s.exit_code is None else f"sleep 2; exit {s.exit_code}"]


async def _through_the_operator(kube_api: Any) -> dict[str, dict[str, Any]]:
    kube_api["get", kmock.subresource("log")] << b"the worker's last words\n"
    c = Cluster(kmock_api(str(kube_api.url)), NAMESPACE)
    try:
        async with running_operator(operator_settings(str(kube_api.url))):
            for s in SCENARIOS:
                await c.create_job(s.name, command=_command(s), gpusPerWorker=0, **s.spec)
            # The one left running (until its deadline stops it) first, before its deadline passes.
            for s in sorted(SCENARIOS, key=lambda s: s.exit_code is not None):
                if s.spec.get("suspend"):
                    continue
                pod = f"{s.name}-worker-0"
                await c.wait_pods(s.name, [pod])
                await c.run_pod(pod)  # the kubelet started it
                if s.exit_code is not None:
                    # Seen running before it ends, as the local runner sees it: the operator folds a pod's
                    # changes of the same 0.1 s into one reconcile, so a start and an end together would
                    # never show the job Running (nor leave its Running condition).
                    await c.wait_phase(s.name, "Running")
                    await c.finish_pod(pod, s.exit_code)
            return {s.name: await c.wait_phase(s.name, s.expected[0]) for s in SCENARIOS}
    finally:
        await c.api.close()


def _through_the_local_cluster(tmp_path: Path, cluster: Path, capsys: pytest.CaptureFixture[str]
                               ) -> dict[str, dict[str, Any]]:
    for s in SCENARIOS:
        manifest = tmp_path / f"{s.name}.yaml"
        manifest.write_text(yaml.safe_dump({
            "apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob", "metadata": {"name": s.name},
            "spec": {"command": _command(s), "gpusPerWorker": 0, **s.spec}}))
        assert cli(capsys, "submit", "-f", str(manifest))[0] == 0
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 90
    while len(found) < len(SCENARIOS):
        assert time.monotonic() < deadline, f"unfinished: {sorted({s.name for s in SCENARIOS} - set(found))}"
        for s in SCENARIOS:
            job = json.loads((cluster / "namespaces" / "default" / "trainjobs" / s.name / "job.json").read_text())
            status = job.get("status") or {}
            if status.get("phase") == (s.local or s.expected)[0]:
                found[s.name] = status
        time.sleep(0.3)
    return found


async def test_the_operator_and_the_local_runner_agree_on_every_scenario(
        tmp_path: Path, kube_api: Any, local_cluster: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    use_file_dataspace(tmp_path, monkeypatch)
    local = await asyncio.to_thread(_through_the_local_cluster, tmp_path, local_cluster, capsys)
    operator = await _through_the_operator(kube_api)
    for s in SCENARIOS:
        assert _outcome(operator[s.name]) == s.expected, s.name
        assert _outcome(local[s.name]) == (s.local or s.expected), s.name
        for type_, expected in s.conditions.items():
            assert _conditions(operator[s.name]).get(type_) == expected, (s.name, type_)
            assert _conditions(local[s.name]).get(type_) == expected, (s.name, type_)
        if s.local is None:  # the same words, and the same conditions, from both
            both = [{k: v for k, v in _conditions(found[s.name]).items() if k not in s.timing}
                    for found in (local, operator)]
            assert both[0] == both[1], s.name
