"""The chart's console section: the Deployment starts `aidi console` with settings its own parser accepts,
the console's RBAC is only what issuing APP KEYs takes, and switching APP KEYs off removes that and the token.
(helm lint, kubernetes-validate and checkov run on ci/console-*.yaml in tests/test_chart.py.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_chart import CHART, NAMESPACE, Helm, _tool, find, one


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(_tool("helm", Path(sys.executable).parent / "helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def console_docs(chart: Helm) -> list[dict[str, Any]]:
    return chart.template("-f", str(CHART / "ci" / "console-values.yaml"))


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "aidi-console", NAMESPACE)
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_the_console_reads_the_settings_the_chart_gives_it(console_docs: list[dict[str, Any]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from aidi.cli import aidi_main, console_cmd

    container = _container(console_docs)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    args = aidi_main.build_parser().parse_args(container["command"][1:] + container["args"])
    settings = console_cmd.settings_from_args(args)
    assert settings.mode == "cluster" and settings.kube_server == "https://10.0.0.1:443"
    assert settings.dataspace.endpoint == "http://aidi-minio.aidi-system.svc:9000"
    assert settings.dataspace.bucket == "aidi"
    assert settings.public_server == "https://k8s.example.com:6443" and settings.secure_cookies
    assert settings.appkeys_enabled and settings.team_role == "aidi-team"
    # The files it reads are the volumes the pod mounts.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.kube_ca == mounts["kube-ca"] + "/ca.crt"
    assert settings.issuer_token_file == mounts["issuer-token"] + "/token"
    assert container["ports"][0]["containerPort"] == args.port
    pod = one(console_docs, "Deployment", "aidi-console")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kube-ca"]["configMap"]["name"] == "kube-root-ca.crt"
    assert volumes["issuer-token"]["projected"]["sources"][0]["serviceAccountToken"]["path"] == "token"
    assert pod["automountServiceAccountToken"] is False


def test_the_console_may_issue_app_keys_and_nothing_else(console_docs: list[dict[str, Any]]) -> None:
    team_role = one(console_docs, "Role", "aidi-team", "team-a")["metadata"]["name"]
    for namespace in ("team-a", "team-b"):
        role = one(console_docs, "Role", "aidi-console-appkeys", namespace)
        rules = {(g, r): (set(rule["verbs"]), rule.get("resourceNames"))
                 for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
        assert rules == {
            ("", "serviceaccounts"): ({"get", "list", "create", "patch", "delete"}, None),
            ("", "serviceaccounts/token"): ({"create"}, None),
            ("rbac.authorization.k8s.io", "rolebindings"): ({"create", "delete"}, None),
            ("rbac.authorization.k8s.io", "roles"): ({"bind"}, [team_role]),
        }
        binding = one(console_docs, "RoleBinding", "aidi-console-appkeys", namespace)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "aidi-console", "namespace": NAMESPACE}]
        # Its only read: the team's dataspace Secret, by name (for the team's logged-in members).
        assert one(console_docs, "Role", "aidi-console-dataspace", namespace)["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["aidi-dataspace"]}]
    # Bound nowhere else: every other read goes with the user's token.
    bound = [b for b in find(console_docs, "RoleBinding") + find(console_docs, "ClusterRoleBinding")
             if any(s.get("name") == "aidi-console" for s in b["subjects"])]
    assert {b["metadata"]["name"] for b in bound} == {"aidi-console-appkeys", "aidi-console-dataspace"}
    assert len(bound) == 4
    assert find(console_docs, "Role", "aidi-console-appkeys", NAMESPACE) == []


def test_ingress_and_service(console_docs: list[dict[str, Any]]) -> None:
    ingress = one(console_docs, "Ingress", "aidi-console")
    assert ingress["spec"]["rules"][0]["host"] == "console.example.com"
    assert ingress["spec"]["tls"] == [{"hosts": ["console.example.com"], "secretName": "console-tls"}]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "aidi-console"
    service = one(console_docs, "Service", "aidi-console")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "console"


def test_without_app_keys_the_console_may_only_read_the_team_dataspace_secret(chart: Helm) -> None:
    docs = chart.template("-f", str(CHART / "ci" / "console-noappkeys-values.yaml"))
    container = _container(docs)
    assert "--no-appkeys" in container["args"]
    assert "--issuer-token-file=/var/run/aidi/console/token" in container["args"]
    assert find(docs, "Role", "aidi-console-appkeys") == [] and find(docs, "Ingress") == []
    roles = [r for r in find(docs, "Role") if "console" in r["metadata"]["name"]]
    assert [r["metadata"]["name"] for r in roles] == ["aidi-console-dataspace"]


def test_off_by_default_and_an_ingress_needs_a_host(chart: Helm) -> None:
    assert [d for d in chart.template() if "console" in d["metadata"]["name"]] == []
    error = chart.template_error("--set", "console.enabled=true,console.ingress.enabled=true")
    assert "--set console.ingress.host=console.example.com" in error
    assert "console/refreshSeconds" in chart.template_error("--set", "console.refreshSeconds=0")
