"""On the real API server (the chart installed by the ``platform`` fixture):

- every TrainJob that ``traincli validate`` refuses is refused by the CRD's schema too (422, naming the
  field), and the same file is refused by the CLI: one rule, two places;
- the operator's job pods are admitted in a team namespace the chart labels
  ``pod-security.kubernetes.io/enforce=restricted`` (and a root job is not), and each job gets its
  NetworkPolicy, owned by the TrainJob.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aidi_operator import netpol
from aidi_operator.kube import ApiRefused, KubeApi, group_path, trainjob_path

from aidi.api.errors import SpecError
from aidi.api.loader import load_text
from aidi.jobs import podspec
from tests.support import e2e
from tests.support.operator import Cluster, eventually

pytestmark = pytest.mark.e2e

BASE: dict[str, Any] = {"apiVersion": "aidi.io/v1alpha1", "kind": "TrainJob",
                        "metadata": {"name": "hostile"}, "spec": {"command": ["bash", "-c", "true"]}}

# (id, change to the manifest, words both refusals must name)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("name-starts-with-digit", {"metadata": {"name": "1job"}}, "metadata.name"),
    ("name-53-characters", {"metadata": {"name": "a" * 53}}, "metadata.name"),
    ("gpus-true", {"spec": {"gpusPerWorker": True}}, "gpusPerWorker"),
    ("deadline-overflow", {"spec": {"activeDeadlineSeconds": 10**15}}, "activeDeadlineSeconds"),
    ("image-upper-case", {"spec": {"image": "UPPER CASE image!!"}}, "image"),
    ("node-selector-key", {"spec": {"nodeSelector": {"bad key!": "x"}}}, "nodeSelector"),
    ("node-selector-value", {"spec": {"nodeSelector": {"gpu": "v" * 64}}}, "nodeSelector"),
    ("queue-name", {"spec": {"queueName": "team a"}}, "queueName"),
    ("quantity", {"spec": {"resources": {"requests": {"memory": "lots"}}}}, "resources.requests"),
    ("toleration-exists-value", {"spec": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
     "tolerations"),
    ("pull-secret-name", {"spec": {"imagePullSecrets": [{"name": "Bad_Name"}]}}, "imagePullSecrets"),
    ("code-uri", {"spec": {"codePackage": {"uri": "http://evil/x"}}}, "codePackage.uri"),
    ("password-secret-key", {"spec": {"codePackage": {"uri": "s3://b/k", "passwordSecretRef": {
        "name": "x", "key": "a/b"}}}}, "passwordSecretRef.key"),
]


def manifest(change: dict[str, Any], namespace: str) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    for section, values in change.items():
        body[section] = {**body[section], **values}
    body["metadata"]["namespace"] = namespace
    return body


async def test_the_crd_and_traincli_refuse_the_same_jobs(platform: e2e.Platform) -> None:
    namespace = platform.teams[0]
    api = KubeApi(e2e.connection)
    try:
        good = manifest({"metadata": {"name": f"ok-{uuid.uuid4().hex[:6]}"}}, namespace)
        load_text(yaml.safe_dump(good))  # the baseline is valid for both
        assert await api.create(trainjob_path(namespace), good)
        await api.delete(trainjob_path(namespace, good["metadata"]["name"]))
        for case, change, field in BAD:
            body = manifest(change, namespace)
            with pytest.raises(SpecError) as cli:
                load_text(yaml.safe_dump(body), source=case)
            assert field in str(cli.value), (case, str(cli.value))
            with pytest.raises(ApiRefused) as server:
                await api.create(trainjob_path(namespace), body)
            assert server.value.status == 422, (case, server.value)
            assert field in str(server.value), (case, str(server.value))
    finally:
        await api.close()


async def test_job_pods_are_admitted_under_restricted_and_get_their_network_policy(
        platform: e2e.Platform, tmp_path: Path) -> None:
    namespace = platform.teams[0]
    api = KubeApi(e2e.connection)
    labels = (await api.get(f"/api/v1/namespaces/{namespace}"))["metadata"]["labels"]  # type: ignore[index]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster = Cluster(api, namespace)
    name, root = f"ps-{uuid.uuid4().hex[:6]}", f"root-{uuid.uuid4().hex[:6]}"
    try:
        with e2e.operator_with_token(platform, tmp_path) as operator:
            job = await cluster.create_job(
                name, workers={"min": 2, "max": 2}, gpusPerWorker=1, nodeSelector=cluster.node_selector,
                codePackage={"uri": "s3://aidi/codepkgs/x/" + "0" * 64 + ".tar.gz.enc"},
                dataSpace={"inputs": [{"name": "adasmini_4pe"}], "output": {"name": "out"}})
            pods = await cluster.wait_pods(name, [f"{name}-scheduler", f"{name}-server-0", f"{name}-server-1",
                                                  f"{name}-worker-0", f"{name}-worker-1"], timeout=60)
            for pod in pods.values():  # admitted as built: hardened, not mutated into shape
                assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
                assert pod["spec"]["automountServiceAccountToken"] is False
                assert not any(v["name"].startswith("kube-api-access") for v in pod["spec"]["volumes"])
                assert pod["status"].get("qosClass") == "Burstable"

            # Closed from the start by the namespace's isolation policy; the job's own one comes once a pod
            # is placed (the test plays the scheduler and kubelet here: the platform's namespaces have no nodes).
            isolation = await api.get(netpol.path(namespace, podspec.ISOLATION_POLICY))
            assert isolation is not None and not isolation["spec"].get("ingress")
            assert all(isolation["spec"]["podSelector"]["matchLabels"].items() <= p["metadata"]["labels"].items()
                       for p in pods.values())
            assert await api.get(netpol.path(namespace, name)) is None
            await cluster.run_pod(f"{name}-scheduler")
            policy = await eventually(lambda: api.get(netpol.path(namespace, name)), what="the job's NetworkPolicy")
            assert policy["spec"]["podSelector"] == {"matchLabels": {"aidi.io/job": name}}
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"aidi.io/job": name}}}],
                                                  "ports": [{"protocol": "TCP"}]}]
            assert policy["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

            # Enforcement is live: a job asking for root is refused by admission, and says so.
            await cluster.create_job(root, runAsRoot=True, nodeSelector=cluster.node_selector)

            async def refused() -> dict[str, Any] | None:
                status = await cluster.status(root)
                return status if status.get("reason") == "CreateFailed" else None
            status = await eventually(refused, 60, what="the root job's CreateFailed status")
            assert "PodSecurity" in status["message"] and "restricted" in status["message"], status
            assert await cluster.pods(root) == {}
        assert not operator.forbidden(), "\n".join(operator.forbidden())
    finally:
        for job_name in (name, root):
            await cluster.delete_job(job_name)

        async def gone() -> bool:
            return await api.get(group_path("networking.k8s.io/v1", namespace, "networkpolicies", name)) is None
        await eventually(gone, 60, what="the NetworkPolicy, garbage-collected with its TrainJob")
        await asyncio.sleep(0)
        await api.close()
