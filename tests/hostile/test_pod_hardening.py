"""Job pods are hardened by default: the Pod Security `restricted` rules (checked here rule by rule; the real
API server's admission checks them in tests/hostile/test_hardening_e2e.py), no ServiceAccount token, a
sizeLimit on every emptyDir, requests derived from the GPUs, a NetworkPolicy per job, and the chart's
values reaching the operator and the team namespaces."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from aidi.api import trainjob as tj
from aidi.jobs import podspec
from aidi.local.pods import prepare_volumes
from aidi.local.store import Namespace

SETTINGS = podspec.PodSettings(job_image="registry.local/aidi/jobimage:1", fetch_image="registry.local/aidi/op:1")
PSA_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def job(**spec: Any) -> tj.TrainJob:
    body = {"command": ["bash", "-c", "${WORKING_PATH}/run.sh"],
            "codePackage": {"uri": "s3://aidi/codepkgs/t/j/" + "0" * 64 + ".tar.gz.enc"},
            "dataSpace": {"inputs": [{"name": "adasmini_4pe"}], "output": {"name": "out"}}} | spec
    return tj.TrainJob.model_validate({"metadata": {"name": "j", "namespace": "team-a"}, "spec": body})


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' `restricted` profile (v1.28), rule by rule, as the admission plugin reads it."""
    spec, problems = pod["spec"], []
    psc = spec.get("securityContext", {})
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= PSA_ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds}")
    for c in containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation != false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append(f"{c['name']}: capabilities not dropped")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{c['name']}: capabilities added")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccomp {seccomp}")
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
    return problems


@pytest.mark.parametrize("workers", [1, 3])
def test_every_pod_meets_the_restricted_profile(workers: int) -> None:
    pods = podspec.build_pods(job(workers={"min": workers, "max": workers}), SETTINGS)
    assert len(pods) == (1 if workers == 1 else 2 * workers + 1)
    for pod in pods:
        assert restricted_violations(pod) == [], pod["metadata"]["name"]
        assert pod["spec"]["automountServiceAccountToken"] is False
        for volume in pod["spec"]["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), volume["name"]
        for c in containers(pod):
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]


def test_the_checker_itself_catches_an_unhardened_pod() -> None:
    pod = podspec.build_pod(job(), podspec.Member("worker", 0), SETTINGS)
    del pod["spec"]["securityContext"]
    pod["spec"]["containers"][0]["securityContext"] = {}
    assert len(restricted_violations(pod)) >= 4


def test_a_job_that_needs_root_gets_it_only_in_the_trainer() -> None:
    pod = podspec.build_pod(job(runAsRoot=True), podspec.Member("worker", 0), SETTINGS)
    by_name = {c["name"]: c for c in containers(pod)}
    assert by_name["trainer"]["securityContext"]["runAsUser"] == 0
    assert by_name["trainer"]["securityContext"]["allowPrivilegeEscalation"] is False
    for step in ("fetch-code", "fetch-data", "sync-output"):
        assert by_name[step]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True  # the steps inherit it
    assert restricted_violations(pod) == ["trainer: capabilities not dropped", "trainer: runAsNonRoot not true",
                                          "trainer: runAsUser 0"]
    cluster_root = podspec.PodSettings(hardening=podspec.PodHardening(run_as_root=True))
    assert podspec.build_pod(job(), podspec.Member("worker", 0), cluster_root)["spec"]["containers"][0][
        "securityContext"]["runAsUser"] == 0
    assert podspec.build_pod(job(runAsRoot=False), podspec.Member("worker", 0), cluster_root)["spec"][
        "containers"][0]["securityContext"].get("runAsUser") is None


def test_service_account_token_only_when_asked() -> None:
    pod = podspec.build_pod(job(serviceAccountToken=True), podspec.Member("worker", 0), SETTINGS)
    assert pod["spec"]["automountServiceAccountToken"] is True


@pytest.mark.parametrize(("spec", "requests", "limits"), [
    ({"gpusPerWorker": 4}, {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}, {"nvidia.com/gpu": "4"}),
    ({"gpusPerWorker": 0}, {"cpu": "4", "memory": "16Gi"}, None),
    ({"gpusPerWorker": 2, "resources": {"requests": {"cpu": "3"}}},
     {"cpu": "3", "memory": "32Gi", "nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"}),
    # A limit alone: no default request above it (Kubernetes takes the limit as the request).
    ({"gpusPerWorker": 1, "resources": {"limits": {"memory": "8Gi"}}},
     {"cpu": "4", "nvidia.com/gpu": "1"}, {"memory": "8Gi", "nvidia.com/gpu": "1"}),
])
def test_requests_follow_the_gpus(spec: dict[str, Any], requests: dict[str, str],
                                  limits: dict[str, str] | None) -> None:
    trainer = podspec.build_pod(job(**spec), podspec.Member("worker", 0), SETTINGS)["spec"]["containers"][0]
    assert trainer["resources"]["requests"] == requests
    assert trainer["resources"].get("limits") == limits


def test_per_gpu_values_and_size_limits_come_from_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDI_JOB_CPU_PER_GPU", "500m")
    monkeypatch.setenv("AIDI_JOB_MEMORY_PER_GPU", "1.5Gi")
    monkeypatch.setenv("AIDI_JOB_CODE_SIZE_LIMIT", "2Gi")
    monkeypatch.setenv("AIDI_JOB_RUN_AS_USER", "4242")
    hardening = podspec.PodHardening.from_env()
    pod = podspec.build_pod(job(gpusPerWorker=3), podspec.Member("worker", 0), podspec.PodSettings(hardening=hardening))
    assert pod["spec"]["containers"][0]["resources"]["requests"] | {} == {
        "cpu": "1500m", "memory": "4.5Gi", "nvidia.com/gpu": "3"}
    assert {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["spec"]["volumes"] if "emptyDir" in v}["code"] == "2Gi"
    assert pod["spec"]["securityContext"]["runAsUser"] == 4242
    monkeypatch.setenv("AIDI_JOB_SHM_SIZE_LIMIT", "lots")
    with pytest.raises(ValueError, match="AIDI_JOB_SHM_SIZE_LIMIT='lots' is not a quantity"):
        podspec.PodHardening.from_env()


def test_operator_reads_the_hardening_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidi_operator import main

    monkeypatch.setenv("AIDI_JOB_RUN_AS_ROOT", "true")
    settings = main.settings_from_args(main.build_parser().parse_args([]))
    assert settings.pods.hardening.run_as_root is True


def test_network_policy_lets_only_the_jobs_own_pods_in() -> None:
    multi = job(workers={"min": 2, "max": 2})
    policy = podspec.build_network_policy(multi, owner_uid="uid-1")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"aidi.io/job": "j"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"aidi.io/job": "j"}}}], "ports": [{"protocol": "TCP"}]}]}
    # Every pod of the job carries the label the policy selects on.
    assert all(p["metadata"]["labels"]["aidi.io/job"] == "j" for p in podspec.build_pods(multi, SETTINGS))
    assert podspec.build_network_policy(job())["spec"]["ingress"] == []  # one worker listens on nothing


def test_local_runner_writes_the_password_owner_only(tmp_path: Path) -> None:
    ns = Namespace(tmp_path / "cluster", "default")
    ns.put_secret("j-code", {"password": "pw"})
    pod = podspec.build_pod(job(), podspec.Member("worker", 0), SETTINGS)
    assert prepare_volumes(pod, tmp_path / "fs", ns) == []
    password = tmp_path / "fs" / podspec.PASSWORD_FILE.lstrip("/")
    assert password.read_text() == "pw"
    assert stat.S_IMODE(password.stat().st_mode) == 0o400
    assert os.access(password, os.R_OK)


def test_chart_labels_team_namespaces_and_passes_the_pod_values(tmp_path: Path) -> None:
    import yaml

    from tests.test_chart import Helm, _tool, one

    helm = Helm(_tool("helm", Path(sys.executable).parent / "helm"), tmp_path)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "teams": [{"namespace": "team-a"}, {"namespace": "team-root", "podSecurity": "baseline"}],
        "jobDefaults": {"pods": {"runAsUser": 2000, "runAsRoot": False, "cpuPerGpu": "6", "memoryPerGpu": "24Gi",
                                 "stepCpu": "1", "stepMemory": "2Gi",
                                 "sizeLimits": {"code": "3Gi", "input": "1Ti", "output": "50Gi", "shm": "4Gi"}}},
    }))
    docs = helm.template("-f", str(values))
    levels = {ns: one(docs, "Namespace", ns)["metadata"]["labels"] for ns in ("team-a", "team-root")}
    assert levels["team-a"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert levels["team-root"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert levels["team-root"]["pod-security.kubernetes.io/warn"] == "restricted"
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["AIDI_JOB_RUN_AS_USER"], env["AIDI_JOB_CPU_PER_GPU"], env["AIDI_JOB_INPUT_SIZE_LIMIT"]) == (
        "2000", "6", "1Ti")
    assert "networkpolicies" in str(docs)  # the operator's RBAC
    refused = helm.run("template", "aidi", str(Path(__file__).parents[2] / "charts" / "aidi"),
                       "--set", "jobDefaults.podSecurity=lax")
    assert refused.returncode != 0 and "podSecurity" in refused.stderr
