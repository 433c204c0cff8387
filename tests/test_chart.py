"""The Helm chart: lints, renders valid Kubernetes for every ci/ value set, passes checkov, carries the
generated CRD byte for byte, and its validation and defaults do what values.yaml promises.

helm and checkov are installed by `make tools` (part of `make test`): tools/install-helm.sh puts helm
into .venv/bin, checkov lives in its own venv .venv/tools/checkov (docs/install.md, "Checks").
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from aidi.api import trainjob as tj
from aidi.api.loader import load_file
from tests.conftest import REPO
from tests.support.rbac import NEEDED_CLUSTER_WIDE, NEEDED_IN_JOB_NAMESPACES, NEEDED_WITH_WATCH_NAMESPACES, expand

CHART = REPO / "charts" / "aidi"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
GITOPS = REPO / "examples" / "gitops"
NAMESPACE = "aidi-system"
# Kinds we define or use without owning: kubernetes-validate knows no schema for them.
CUSTOM_KINDS = {tj.KIND, "PodGroup"}


def _tool(name: str, *candidates: Path) -> str:
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: run `make tools` (tools/install-helm.sh, the checkov venv)"
    return found


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    home = tmp_path_factory.mktemp("helm-home")
    yield Helm(_tool("helm", Path(sys.executable).parent / "helm"), home)


class Helm:
    """helm with its cache/config/data folders in a temp dir, so tests touch nothing of the user's."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe = exe
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe, *args], capture_output=True, text=True, env=self.env, timeout=120)

    def template(self, *args: str, crds: bool = False) -> list[dict[str, Any]]:
        extra = ["--include-crds"] if crds else []
        result = self.run("template", "aidi", str(CHART), "-n", NAMESPACE, *extra, *args)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def template_error(self, *args: str) -> str:
        result = self.run("template", "aidi", str(CHART), "-n", NAMESPACE, *args)
        assert result.returncode != 0, "expected the chart to refuse these values"
        return result.stderr


def values_file(path: Path) -> list[str]:
    return ["-f", str(path)]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace}, found {len(found)}"
    return found[0]


def secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """Every ci/ value set rendered once (with the CRD), keyed by file name."""
    return {path.name: helm.template(*values_file(path), crds=True) for path in CI_VALUES}


# ----------------------------------------------------------------------------- the CI checks


def test_chart_crd_is_byte_identical_to_the_generated_one() -> None:
    chart_crd = CHART / "crds" / "trainjobs.aidi.io.yaml"
    assert chart_crd.read_bytes() == (REPO / "crds" / "trainjobs.aidi.io.yaml").read_bytes(), \
        "charts/aidi/crds/ has drifted from crds/: run `make crd` (it regenerates both)"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict(helm: Helm, values: Path) -> None:
    result = helm.run("lint", "--strict", str(CHART), "-n", NAMESPACE, *values_file(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_ci_value_set_is_valid_kubernetes_1_30(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # Document by document, so one bad object does not hide the next (the CLI stops at the first).
    errors = []
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, "1.30", strict=True)
            except kubernetes_validate.ValidationError as err:
                errors.append(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    assert errors == []
    kinds = {doc["kind"] for docs in rendered.values() for doc in docs}
    assert not kinds & CUSTOM_KINDS, "the chart renders a custom-kind object; validate it against its CRD here"
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "Job", "PriorityClass", "Namespace",
            "ResourceQuota", "NetworkPolicy", "Role", "ClusterRole"} <= kinds


def test_kubernetes_validate_cli_rejects_a_broken_render(helm: Helm, tmp_path: Path) -> None:
    # The validator really looks at what we feed it: a misspelt field in a rendered object fails.
    docs = helm.template()
    deployment = one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    exe = _tool("kubernetes-validate", Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([exe, "--strict", "-k", "1.30", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "imagePullPolcy" in result.stdout + result.stderr


def _checkov(helm: Helm, *args: str) -> dict[str, Any]:
    exe = _tool("checkov", REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov")
    env = {**helm.env, "PATH": f"{Path(helm.exe).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([exe, *args, "--config-file", str(CHART / ".checkov.yaml"), "-o", "json"],
                            capture_output=True, text=True, env=env, timeout=300)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for report in reports for c in report["results"]["failed_checks"]]
    passed = sum(report["summary"]["passed"] for report in reports)
    assert failed == [], "checkov failed checks (fix them, or skip with a reason in .checkov.yaml):\n" + \
        "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"passed": passed, "skipped": [c["check_id"] for r in reports for c in r["results"]["skipped_checks"]]}


def test_checkov_passes_on_the_chart_with_only_documented_skips(helm: Helm) -> None:
    summary = _checkov(helm, "-d", str(CHART), "--framework", "helm")
    assert summary["passed"] > 100
    documented = (REPO / "docs" / "install.md").read_text()
    for check in set(summary["skipped"]):
        assert check in documented, f"{check} is skipped but docs/install.md does not say why"


def test_checkov_passes_on_every_ci_value_set(helm: Helm, rendered: dict[str, list[dict[str, Any]]],
                                              tmp_path: Path) -> None:
    for name, docs in rendered.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(docs))
    summary = _checkov(helm, "-d", str(tmp_path), "--framework", "kubernetes")
    assert summary["passed"] > 300


def test_ci_value_sets_take_both_sides_of_every_optional_branch(rendered: dict[str, list[dict]]) -> None:
    features = {
        "in-chart MinIO": lambda d: bool(find(d, "StatefulSet")),
        "team namespace created": lambda d: bool(find(d, "Namespace")),
        "GPU quota": lambda d: bool(find(d, "ResourceQuota")),
        "chart-made dataspace Secret": lambda d: bool(find(d, "Secret", "aidi-dataspace")),
        "cluster-wide operator": lambda d: any(r["metadata"]["name"].endswith("-operator")
                                               for r in find(d, "ClusterRole")),
        "namespaced operator": lambda d: any(r["metadata"]["name"].endswith("-operator") for r in find(d, "Role")),
        "PriorityClasses": lambda d: bool(find(d, "PriorityClass")),
        "NetworkPolicies": lambda d: bool(find(d, "NetworkPolicy")),
        "operator ServiceAccount created": lambda d: any(s["metadata"]["name"].endswith("-operator")
                                                         for s in find(d, "ServiceAccount")),
        "image digests": lambda d: "@sha256:" in yaml.safe_dump_all(find(d, "Deployment") + find(d, "StatefulSet")),
        "team subjects bound": lambda d: bool(find(d, "RoleBinding", "aidi-team")),
        "operator cluster-wide with teams": lambda d: bool(find(d, "Namespace")) and bool(
            [r for r in find(d, "ClusterRole") if r["metadata"]["name"].endswith("-operator")]),
        "MinIO root Secret made by the chart": lambda d: any(s["metadata"]["name"].endswith("-minio")
                                                            for s in find(d, "Secret")),
    }
    for feature, present in features.items():
        seen = {present(docs) for docs in rendered.values()}
        assert seen == {True, False}, f"no ci/ value set {'turns on' if False not in seen else 'turns off'} " \
                                      f"{feature!r}"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "dataspace.mode=external"],
     ["--set dataspace.external.endpoint=", "--set dataspace.credentials.existingSecret="]),
    (["--set", "dataspace.credentials.existingSecret=s3,dataspace.credentials.accessKey=ak"],
     ["existingSecret and accessKey/secretKey are both set", "--set dataspace.credentials.existingSecret="]),
    (["--set", "minio.auth.rootPassword=short"], ["minio.auth.rootPassword must be at least 8", "--set"]),
    (["--set", "minio.auth.rootPassword=has/slash-in-it"], ["minio.auth.rootPassword"]),
    (["--set", "dataspace.credentials.accessKey=aidi-admin"], ["is MinIO's root user",
                                                               "--set dataspace.credentials.accessKey="]),
    (["--set", "operator.serviceAccount.create=false"], ["--set operator.serviceAccount.name=NAME"]),
    (["--set", f"teams[0].namespace={NAMESPACE}"], ["is the release namespace", "--set teams[0].namespace="]),
    (["--set", "teams[0].namespace=a,teams[1].namespace=a"], ['teams[1].namespace "a" is listed twice']),
    (["--set", "teams[0].namespace=a,operator.watchNamespaces={b}"],
     ["would never start", "--set operator.watchNamespaces={b,a}"]),
])
def test_bad_values_fail_with_the_set_that_fixes_them(helm: Helm, args: list[str], expected: list[str]) -> None:
    error = helm.template_error(*args)
    for fragment in expected:
        assert fragment in error, error


def test_every_problem_is_reported_at_once(helm: Helm) -> None:
    error = helm.template_error("--set", "dataspace.mode=external,operator.serviceAccount.create=false")
    assert "have 3 problem(s)" in error


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "operator.imag.tag=x"], "additional properties 'imag' not allowed"),
    (["--set", "dataspace.mode=s3"], "dataspace/mode"),
    (["--set", "teams[0].namespace=Team_A"], "teams/0/namespace"),
    (["--set", "teams[0].namespace=a,teams[0].gpuQuta=4"], "gpuQuta"),
    (["--set", "priorityClasses.preemptionPolicy=Sometimes"], "preemptionPolicy"),
])
def test_the_schema_rejects_typos_and_bad_types(helm: Helm, args: list[str], expected: str) -> None:
    assert expected in helm.template_error(*args)


# Kubernetes' own field names, documented by their parent's comment (e.g. `resources:`).
SELF_EXPLANATORY = {"requests", "limits", "cpu", "memory", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                    "failureThreshold"}


def test_every_value_is_commented_and_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[int, bool] = {}
    parents: list[tuple[int, int]] = []   # (indent, line index) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = stripped.split(":", 1)[0]
        parent_ok = bool(parents) and documented[parents[-1][1]]
        documented[i] = lines[i - 1].strip().startswith("#") or (parent_ok and key in SELF_EXPLANATORY)
        if not documented[i]:
            undocumented.append(f"values.yaml:{i + 1}: {stripped}")
        parents.append((indent, i))
    assert undocumented == [], "values without a comment above them"


# ----------------------------------------------------------------------------- what gets installed


def test_default_install_gives_each_team_its_own_dataspace_account_and_keeps_root_apart(helm: Helm) -> None:
    docs = helm.template("--set", "teams[0].namespace=team-a,teams[1].namespace=team-b")
    platform = one(docs, "Secret", "aidi-dataspace", NAMESPACE)
    team_a = one(docs, "Secret", "aidi-dataspace", "team-a")
    team_b = one(docs, "Secret", "aidi-dataspace", "team-b")
    assert len({secret_value(s, "accessKey") for s in (platform, team_a, team_b)}) == 3
    assert len({secret_value(s, "secretKey") for s in (platform, team_a, team_b)}) == 3
    assert secret_value(platform, "accessKey") == "aidi-dataspace" and len(secret_value(team_a, "secretKey")) == 40
    root = one(docs, "Secret", "aidi-minio", NAMESPACE)
    assert secret_value(root, "rootPassword") not in (secret_value(team_a, "secretKey"),
                                                      secret_value(platform, "secretKey"))
    # The bucket-init Job creates exactly the user the pods use, from the same Secret.
    job = one(docs, "Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATASPACE_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "aidi-dataspace", "key": "secretKey"}
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "$DATASPACE_SECRET_KEY\" | mc admin user add" in script   # on stdin, not in argv


def test_given_credentials_are_used_and_no_secret_leaks_into_args(helm: Helm) -> None:
    docs = helm.template("--set", "teams[0].namespace=t,dataspace.credentials.accessKey=ak-team,"
                         "dataspace.credentials.secretKey=s3cr3t-value-1,minio.auth.rootPassword=r00t-password-1,"
                         "teams[0].dataspace.secretKey=t3am-s3cr3t-1")
    assert secret_value(one(docs, "Secret", "aidi-dataspace", NAMESPACE), "secretKey") == "s3cr3t-value-1"
    assert secret_value(one(docs, "Secret", "aidi-dataspace", "t"), "secretKey") == "t3am-s3cr3t-1"
    assert secret_value(one(docs, "Secret", "aidi-minio"), "rootPassword") == "r00t-password-1"
    workloads = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert "s3cr3t-value-1" not in workloads and "r00t-password-1" not in workloads
    assert "t3am-s3cr3t-1" not in workloads


def test_existing_secrets_create_no_copies(helm: Helm) -> None:
    docs = helm.template("--set", "teams[0].namespace=t,dataspace.credentials.existingSecret=ds,"
                         "minio.auth.existingSecret=root")
    assert find(docs, "Secret", "aidi-dataspace") == [] and find(docs, "Secret", "aidi-minio") == []
    minio = one(docs, "StatefulSet")
    env = {e["name"]: e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "root"
    assert "checksum/auth" in minio["spec"]["template"]["metadata"]["annotations"]


def test_a_new_root_password_rolls_minio(helm: Helm) -> None:
    def checksum(password: str) -> str:
        docs = helm.template("--set", f"minio.auth.rootPassword={password}")
        return one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/auth"]
    assert checksum("first-password") == checksum("first-password") != checksum("second-password")


def test_operator_deployment_runs_aidi_operator_with_the_cluster_defaults(helm: Helm) -> None:
    docs = helm.template()
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["aidi-operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "AIDI_NAMESPACES" not in env and env["AIDI_LIVENESS_PORT"] == "8080"
    assert env["AIDI_DATASPACE_SECRET"] == "aidi-dataspace"
    service = one(docs, "Service", "aidi-minio")
    assert env["AIDI_DATASPACE_ENDPOINT"] == f"http://aidi-minio.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    assert env["AIDI_DATASPACE_BUCKET"] == "aidi"
    assert env["AIDI_JOB_IMAGE"] == "aidi/jobimage:0.1.0" and env["AIDI_FETCH_IMAGE"] == container["image"]
    external = helm.template(*values_file(CHART / "ci" / "external-s3-values.yaml"))
    env = {e["name"]: e.get("value") for e in one(external, "Deployment")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["AIDI_DATASPACE_ENDPOINT"] == "https://s3.example.com" and find(external, "StatefulSet") == []
    assert env["AIDI_NAMESPACES"] == "vision,lidar" and env["AIDI_LIVENESS_PORT"] == "9090"


def test_every_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        for workload, spec in pod_specs(docs):
            where = f"{name}: {workload}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in spec["containers"]:
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where


def test_rbac_is_least_privilege(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["teams-values.yaml"]
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
    # Exactly what the operator needs (tests/support/rbac.py, docs/operator.md's table): nothing more. With
    # teams listed, its rights are Roles in their namespaces; cluster-wide only when asked (console-values).
    assert not find(docs, "ClusterRole", "aidi-operator")
    for namespace in ("team-a", "team-b"):
        assert expand(one(docs, "Role", "aidi-operator", namespace)["rules"]) == NEEDED_IN_JOB_NAMESPACES
    assert expand(one(docs, "ClusterRole", "aidi-operator-cluster")["rules"]) == (
        NEEDED_CLUSTER_WIDE | NEEDED_WITH_WATCH_NAMESPACES)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AIDI_NAMESPACES"] == "team-a,team-b"
    wide = rendered["console-values.yaml"]
    assert expand(one(wide, "ClusterRole", "aidi-operator")["rules"]) == NEEDED_IN_JOB_NAMESPACES
    assert expand(one(wide, "ClusterRole", "aidi-operator-cluster")["rules"]) == NEEDED_CLUSTER_WIDE
    assert not [r for r in find(wide, "Role") if r["metadata"]["name"].endswith("-operator")]
    # With watchNamespaces: a Role in each listed namespace, and kopf may follow namespaces.
    scoped = rendered["external-s3-values.yaml"]
    assert expand(one(scoped, "ClusterRole", "aidi-platform-operator-cluster")["rules"]) == (
        NEEDED_CLUSTER_WIDE | NEEDED_WITH_WATCH_NAMESPACES)
    assert not find(scoped, "ClusterRole", "aidi-platform-operator")
    for namespace in ("vision", "lidar"):
        assert expand(one(scoped, "Role", "aidi-platform-operator", namespace)["rules"]) == NEEDED_IN_JOB_NAMESPACES
    team = {(g, r): set(rule["verbs"]) for rule in one(docs, "Role", "aidi-team", "team-a")["rules"]
            for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "delete", "watch"} <= team[("aidi.io", "trainjobs")]
    assert team[("", "pods/log")] == {"get"} and ("", "pods") in team and "create" not in team[("", "pods")]
    # Secrets: create only. get/list/watch/patch/update/delete all answer with a Secret's data.
    assert team[("", "secrets")] == {"create"}
    assert not any(rule.get("resourceNames") for rule in one(docs, "Role", "aidi-team", "team-a")["rules"])


def test_team_onboarding(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["teams-values.yaml"]
    # No long-lived credential in a team namespace: no token Secret, no team ServiceAccount.
    assert not [s for s in find(docs, "Secret") if s.get("type") == "kubernetes.io/service-account-token"]
    assert not find(docs, "ServiceAccount", "traincli")
    assert one(docs, "ResourceQuota", namespace="team-a")["spec"]["hard"] == {"requests.nvidia.com/gpu": "16"}
    assert find(docs, "ResourceQuota", namespace="team-b") == []
    assert [n["metadata"]["name"] for n in find(docs, "Namespace")] == ["team-a"]   # team-b already exists
    binding = one(docs, "RoleBinding", "aidi-team", "team-a")
    assert binding["subjects"] == [{"kind": "Group", "name": "team-a-engineers",
                                    "apiGroup": "rbac.authorization.k8s.io"}]
    assert not find(docs, "RoleBinding", "aidi-team", "team-b")
    policy = one(docs, "NetworkPolicy", "aidi-minio")
    allowed = policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert allowed == [NAMESPACE, "team-a", "team-b"]


def _secret(doc: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def test_each_team_has_its_own_dataspace_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["teams-values.yaml"]
    a, b = (_secret(one(docs, "Secret", "aidi-dataspace", ns)) for ns in ("team-a", "team-b"))
    assert (a["bucket"], a["accessKey"], b["bucket"], b["accessKey"]) == ("aidi-team-a", "aidi-team-a",
                                                                          "aidi-team-b", "aidi-team-b")
    assert a["sharedBucket"] == b["sharedBucket"] == "aidi"
    assert len(a["secretKey"]) == 40 and a["secretKey"] != b["secretKey"]
    assert "team-dataspace" not in (a["accessKey"], b["accessKey"])   # not the platform's account
    # The bucket-init Job gets exactly these keys, as files, and makes one user and policy per team.
    keys = _secret(one(docs, "Secret", "aidi-team-dataspace"))
    assert keys == {"team-a.accessKey": a["accessKey"], "team-a.secretKey": a["secretKey"],
                    "team-b.accessKey": b["accessKey"], "team-b.secretKey": b["secretKey"]}
    job = one(docs, "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for ns in ("team-a", "team-b"):
        assert f'team_bucket="aidi-{ns}"' in script and f"aidi-team-{ns}" in script
    assert a["secretKey"] not in yaml.safe_dump(job)
    chosen = _secret(one(rendered["console-values.yaml"], "Secret", "aidi-dataspace", "team-a"))
    assert (chosen["bucket"], chosen["accessKey"], chosen["secretKey"]) == (
        "vision-data", "vision-team", "ci-only-team-secret-0123")


def test_the_console_reads_only_the_teams_dataspace_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["console-noappkeys-values.yaml"]
    role = one(docs, "Role", "aidi-console-dataspace", "team-a")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                              "resourceNames": ["aidi-dataspace"]}]


def test_priority_classes_follow_the_trainjob_priority(rendered: dict[str, list[dict[str, Any]]]) -> None:
    classes = find(rendered["default-values.yaml"], "PriorityClass")
    assert [c["metadata"]["name"] for c in classes] == [f"aidi-priority-{n}" for n in range(1, 6)]
    values = [c["value"] for c in classes]
    assert values == sorted(values) and len(set(values)) == 5 and not any(c["globalDefault"] for c in classes)
    low = find(rendered["minio-existing-secret-values.yaml"], "PriorityClass")
    assert [c["value"] for c in low] == [100, 200, 300, 400, 500] and low[0]["preemptionPolicy"] == "Never"


# ----------------------------------------------------------------------------- GitOps examples


def _gitops_values() -> list[tuple[str, dict[str, Any]]]:
    argo = yaml.safe_load((GITOPS / "argocd-application.yaml").read_text())
    flux = {d["kind"]: d for d in yaml.safe_load_all((GITOPS / "flux-helmrelease.yaml").read_text()) if d}
    return [("argocd", argo["spec"]["source"]["helm"]["valuesObject"]), ("flux", flux["HelmRelease"]["spec"]["values"])]


@pytest.mark.parametrize(("tool", "values"), _gitops_values(), ids=["argocd", "flux"])
def test_gitops_examples_render_the_chart(helm: Helm, tool: str, values: dict[str, Any], tmp_path: Path) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    path = tmp_path / f"{tool}.yaml"
    path.write_text(yaml.safe_dump(values))
    docs = helm.template("-f", str(path))
    assert one(docs, "Deployment")["metadata"]["namespace"] == NAMESPACE
    # GitOps tools render without cluster access: generated credentials would change on every sync.
    assert values["dataspace"]["credentials"].get("existingSecret"), f"{tool}: set existingSecret"


def test_gitops_examples_point_at_the_chart() -> None:
    argo = yaml.safe_load((GITOPS / "argocd-application.yaml").read_text())
    assert argo["kind"] == "Application" and argo["spec"]["source"]["path"] == "charts/aidi"
    assert argo["spec"]["destination"]["namespace"] == NAMESPACE
    assert "CreateNamespace=true" in argo["spec"]["syncPolicy"]["syncOptions"]
    flux = {d["kind"]: d for d in yaml.safe_load_all((GITOPS / "flux-helmrelease.yaml").read_text()) if d}
    release = flux["HelmRelease"]
    assert release["spec"]["chart"]["spec"]["chart"] == "./charts/aidi"
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    assert flux["GitRepository"]["metadata"]["name"] == release["spec"]["chart"]["spec"]["sourceRef"]["name"]


def test_gitops_trainjob_is_accepted_by_the_crd_and_the_loader() -> None:
    path = GITOPS / "trainjob.yaml"
    crd = yaml.safe_load((CHART / "crds" / "trainjobs.aidi.io.yaml").read_text())
    validator = jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    manifest = yaml.safe_load(path.read_text())
    assert list(validator.iter_errors(manifest)) == []
    assert load_file(path).job.metadata.name == manifest["metadata"]["name"]


# ----------------------------------------------------------------------------- the operator's contract


@pytest.mark.parametrize("values", ["default-values.yaml", "external-s3-values.yaml"])
def test_the_operator_reads_the_settings_the_chart_gives_it(rendered: dict[str, list[dict[str, Any]]],
                                                            values: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real aidi-operator argument parser, fed the Deployment's command and environment.
    from aidi_operator import main as operator_main

    container = one(rendered[values], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name in [n for n in os.environ if n.startswith("AIDI_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = operator_main.build_parser().parse_args(container.get("args", []))
    settings = operator_main.settings_from_args(args)
    assert settings.pods.job_image == env["AIDI_JOB_IMAGE"]
    assert settings.pods.fetch_image == env["AIDI_FETCH_IMAGE"]
    assert settings.pods.dataspace_endpoint == env["AIDI_DATASPACE_ENDPOINT"]
    assert (settings.pods.dataspace_bucket, settings.pods.dataspace_secret) == (env["AIDI_DATASPACE_BUCKET"],
                                                                                 "aidi-dataspace")
    port = container["ports"][0]["containerPort"]
    assert settings.liveness_port == port and container["livenessProbe"]["httpGet"]["port"] == "health"
    assert settings.namespaces == tuple(filter(None, env.get("AIDI_NAMESPACES", "").split(",")))
    assert settings.resync_seconds == float(env["AIDI_RESYNC_SECONDS"])
