"""The chart on a real API server: it installs, its every value set passes the server's own validation and
admission, and the operator's rights are exactly what the operator needs — enough to run jobs (the
scenarios of test_operator_e2e.py run with them) and nothing more, cluster-wide and with watchNamespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aidi_operator.kube import KubeApi

from tests.support import e2e
from tests.support import operator_scenarios as scenarios
from tests.support.operator import ScheduledCluster
from tests.support.rbac import (
    NEEDED_CLUSTER_WIDE,
    NEEDED_IN_JOB_NAMESPACES,
    NEEDED_WITH_WATCH_NAMESPACES,
    Rule,
    expand,
)

pytestmark = pytest.mark.e2e

CI_VALUES = sorted((e2e.CHART / "ci").glob("*.yaml"))

def rules(kubeconfig: Path, namespace: str) -> set[Rule]:
    """What the kubeconfig's identity may do in a namespace, as the API server itself reports it."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    out = e2e.kubectl("create", "--validate=false", "-f", "-", "-o", "json", kubeconfig=str(kubeconfig),
                      input=json.dumps(review)).stdout
    status = json.loads(out)["status"]
    assert not status.get("incomplete"), status
    return expand(status.get("resourceRules") or [])


@pytest.fixture(scope="module")
def anyone(platform: e2e.Platform, tmp_path_factory: pytest.TempPathFactory) -> set[Rule]:
    """What every authenticated ServiceAccount may do (self-reviews and the like): not the chart's doing."""
    tmp = tmp_path_factory.mktemp("anyone")
    e2e.kubectl("create", "serviceaccount", "nobody", "-n", platform.namespace)
    try:
        config = e2e.token_kubeconfig(tmp / "kubeconfig", e2e.create_token("nobody", platform.namespace, 600),
                                      platform.namespace)
        return rules(config, platform.teams[0])
    finally:
        e2e.kubectl("delete", "serviceaccount", "nobody", "-n", platform.namespace)


def operator_kubeconfig(platform: e2e.Platform, tmp: Path, service_account: str | None = None) -> Path:
    token = e2e.create_token(service_account or platform.operator_service_account, platform.namespace, 600)
    return e2e.token_kubeconfig(tmp / "operator.kubeconfig", token, platform.namespace)


# ------------------------------------------------------------------------------------------ the chart


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_the_api_server_accepts_every_value_set_of_the_chart(platform: e2e.Platform, values: Path) -> None:
    # A server-side dry run of an upgrade of the installed release: the cluster's own schemas and admission
    # judge every object (ownership of the cluster-wide ones included), nothing is stored.
    result = platform.helm("upgrade", platform.release, str(e2e.CHART), "-n", platform.namespace,
                           "--dry-run=server", "-f", str(values), check=False)
    assert result.returncode == 0, result.stderr


def test_the_chart_installs_teams_and_the_cluster_wide_objects_and_no_lasting_credential(
        platform: e2e.Platform) -> None:
    classes = e2e.kubectl("get", "priorityclasses", "-o", "json").stdout
    values = {c["metadata"]["name"]: c["value"] for c in json.loads(classes)["items"]}
    assert [values.get(f"aidi-priority-{n}") for n in range(1, 6)] == [1000, 2000, 3000, 4000, 5000]
    for team in platform.teams:
        # No Secret in a team namespace holds a cluster credential (no token Secret, no `traincli` account).
        secrets = json.loads(e2e.kubectl("get", "secrets", "-n", team, "-o", "json").stdout)["items"]
        assert [s["metadata"]["name"] for s in secrets if s["type"] == "kubernetes.io/service-account-token"] == []
        assert e2e.kubectl("get", "serviceaccount", "traincli", "-n", team, check=False).returncode != 0
        assert platform.team_token(team).count(".") == 2, "an APP KEY is a ServiceAccount token (a JWT)"


# ----------------------------------------------------------------------------------- a member's key


def can_i(account: str, verb: str, resource: str, namespace: str) -> bool:
    answer = e2e.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={account}", check=False)
    return answer.stdout.strip() == "yes"


def test_an_app_key_can_do_what_traincli_needs_and_nothing_that_becomes_another_credential(
        platform: e2e.Platform) -> None:
    """`kubectl auth can-i --as` the key's ServiceAccount: the Role `aidi-team` (docs/security.md)."""
    for team in platform.teams:
        other = platform.teams[1] if team == platform.teams[0] else platform.teams[0]
        me = f"system:serviceaccount:{team}:{platform.team_account(team)}"
        allowed = [("create", "trainjobs.aidi.io"), ("list", "trainjobs.aidi.io"), ("delete", "trainjobs.aidi.io"),
                   ("patch", "trainjobs.aidi.io"), ("get", "pods/log"), ("list", "pods"), ("list", "events"),
                   ("create", "secrets")]
        refused = [("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("get", "secrets/aidi-dataspace"),
                   ("get", "secrets/traincli-token"), ("delete", "secrets/aidi-dataspace"),
                   ("patch", "secrets/aidi-dataspace"), ("update", "secrets/aidi-dataspace"),
                   ("create", "pods"), ("create", "serviceaccounts/token"), ("create", "rolebindings"),
                   ("get", "configmaps")]
        answers = {(verb, res): can_i(me, verb, res, team) for verb, res in allowed + refused}
        assert {k for k in allowed if not answers[k]} == set(), f"{team}'s key lacks what traincli needs"
        assert {k for k in refused if answers[k]} == set(), f"{team}'s key may do more than it should"
        for verb, res in (("list", "trainjobs.aidi.io"), ("list", "pods"), ("list", "events"),
                          ("create", "trainjobs.aidi.io"), ("create", "secrets"), ("get", "pods/log")):
            assert not can_i(me, verb, res, other), f"{team}'s key may {verb} {res} in {other}"


def test_the_keys_own_token_is_refused_the_team_secrets_and_the_other_team(platform: e2e.Platform,
                                                                            tmp_path: Path) -> None:
    """Real requests with the APP KEY's token, not only what RBAC says it would decide."""
    team, other = platform.teams
    config = e2e.token_kubeconfig(tmp_path / "key.kubeconfig", platform.team_token(team), team)
    assert e2e.kubectl("get", "trainjobs", kubeconfig=str(config), check=False).returncode == 0
    for args in (("get", "secret", "aidi-dataspace"), ("get", "secret", "traincli-token"), ("get", "secrets"),
                 ("delete", "secret", "aidi-dataspace"),
                 ("patch", "secret", "aidi-dataspace", "-p", '{"metadata":{"labels":{"x":"y"}}}'),
                 ("get", "trainjobs", "-n", other), ("get", "pods", "-n", other), ("get", "events", "-n", other)):
        result = e2e.kubectl(*args, kubeconfig=str(config), check=False)
        assert result.returncode != 0 and "Forbidden" in result.stderr, (args, result.stderr)
    assert e2e.kubectl("get", "secret", "aidi-dataspace", "-n", team).returncode == 0   # still there


def test_a_revoked_key_is_refused_by_the_api_server_within_seconds(platform: e2e.Platform, tmp_path: Path) -> None:
    team = platform.teams[0]
    issued = json.loads(e2e.run_aidi("appkey", "issue", "-n", team, "--description", "to revoke", "--ttl", "600",
                                     "--json"))
    config = e2e.token_kubeconfig(tmp_path / "key.kubeconfig", issued["token"].split(":", 1)[1], team)
    assert e2e.kubectl("get", "trainjobs", kubeconfig=str(config), check=False).returncode == 0
    listed = e2e.run_aidi("appkey", "list", "-n", team)
    assert issued["id"] in listed and issued["token"].split(":", 1)[1] not in listed
    e2e.run_aidi("appkey", "revoke", "-n", team, issued["id"])
    started = time.monotonic()

    def unauthorized() -> bool:
        result = e2e.kubectl("get", "trainjobs", kubeconfig=str(config), check=False)
        return result.returncode != 0 and "Unauthorized" in result.stderr

    e2e.wait_for(unauthorized, timeout=30, interval=0.5, what="the API server refusing a revoked key (401)")
    print(f"revoked APP KEY refused (401) after {time.monotonic() - started:.1f} s")
    assert issued["id"] not in e2e.run_aidi("appkey", "list", "-n", team)


# ------------------------------------------------------------------------------ the operator's rights


def test_the_operators_rights_cluster_wide_are_exactly_what_it_needs(
        platform: e2e.Platform, anyone: set[Rule], tmp_path: Path) -> None:
    # The platform release asks for it (operator.clusterWide); with only teams listed, the rights are Roles.
    config = operator_kubeconfig(platform, tmp_path)
    expected = NEEDED_IN_JOB_NAMESPACES | NEEDED_CLUSTER_WIDE
    for namespace in (platform.teams[0], "default"):
        granted = rules(config, namespace) - anyone
        assert granted - expected == set(), f"the chart grants the operator more than it needs in {namespace}"
        assert expected - granted == set(), f"the chart lacks rights the operator needs in {namespace}"


@contextlib.contextmanager
def installed(release: e2e.Platform, *own_namespaces: str) -> Iterator[None]:
    """A further release of the chart beside the platform's, uninstalled afterwards. Not ``Platform.uninstall``:
    the CRD and the platform's team namespaces are shared with the platform; only ``own_namespaces`` go."""
    release.install()
    try:
        yield
    finally:
        release.helm("uninstall", release.release, "-n", release.namespace, "--wait", "--timeout", "120s",
                     check=False)
        e2e.kubectl("delete", "namespace", release.namespace, *own_namespaces, "--ignore-not-found", "--wait=false",
                    check=False)


@pytest.fixture(scope="module")
def namespaced_release(platform: e2e.Platform) -> Iterator[e2e.Platform]:
    """A second release whose operator watches only team B: Roles in that namespace instead of a ClusterRole."""
    release = e2e.Platform(platform.run, platform.home, platform.s3_endpoint, platform.s3_credentials,
                           release="aidi-e2e-ns", namespace=f"{platform.namespace}-ns")
    release.values |= {"teams": [], "priorityClasses": {"create": False}, "console": {"enabled": False},
                       "operator": {"resyncSeconds": 1, "watchNamespaces": [platform.teams[1]]}}
    release.teams = platform.teams
    with installed(release):
        yield release


@pytest.fixture(scope="module")
def team_scoped_release(platform: e2e.Platform) -> Iterator[e2e.Platform]:
    """A third release that lists one team of its own and says nothing else about the operator's scope: the
    chart's default with teams (docs/security.md, "The operator")."""
    release = e2e.Platform(platform.run, platform.home, platform.s3_endpoint, platform.s3_credentials,
                           release="aidi-e2e-teams", namespace=f"{platform.namespace}-teams")
    team = f"aidi-e2e-{platform.run}-team-c"
    release.values |= {"teams": [{"namespace": team}], "priorityClasses": {"create": False},
                       "console": {"enabled": False}, "operator": {"resyncSeconds": 1}}
    release.teams = (team, team)
    with installed(release, team):
        yield release


def test_with_teams_listed_the_operator_has_rights_in_their_namespaces_only(
        team_scoped_release: e2e.Platform, platform: e2e.Platform, anyone: set[Rule], tmp_path: Path) -> None:
    config = operator_kubeconfig(team_scoped_release, tmp_path)
    team = team_scoped_release.teams[0]
    cluster_wide = NEEDED_CLUSTER_WIDE | NEEDED_WITH_WATCH_NAMESPACES
    assert rules(config, team) - anyone == NEEDED_IN_JOB_NAMESPACES | cluster_wide
    for elsewhere in (platform.teams[0], "default"):
        assert rules(config, elsewhere) - anyone == cluster_wide, f"it may touch pods in {elsewhere}"
    deployment = json.loads(e2e.kubectl("get", "deployment", f"{team_scoped_release.release}-operator", "-n",
                                        team_scoped_release.namespace, "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIDI_NAMESPACES"] == team   # and it watches only there


def test_with_watch_namespaces_the_operator_reaches_those_namespaces_only(
        namespaced_release: e2e.Platform, anyone: set[Rule], tmp_path: Path) -> None:
    config = operator_kubeconfig(namespaced_release, tmp_path)
    watched, other = namespaced_release.teams[1], namespaced_release.teams[0]
    cluster_wide = NEEDED_CLUSTER_WIDE | NEEDED_WITH_WATCH_NAMESPACES
    assert rules(config, watched) - anyone == NEEDED_IN_JOB_NAMESPACES | cluster_wide
    assert rules(config, other) - anyone == cluster_wide, "it may touch pods of a namespace it does not serve"
    assert rules(config, "default") - anyone == cluster_wide


async def test_with_watch_namespaces_the_operator_runs_jobs_there_and_leaves_others_alone(
        namespaced_release: e2e.Platform, e2e_nodes: e2e.Kubelet, tmp_path: Path) -> None:
    watched, other = namespaced_release.teams[1], namespaced_release.teams[0]
    api = KubeApi(e2e.connection)
    try:
        here, elsewhere = (ScheduledCluster(api, ns, e2e_nodes.selector) for ns in (watched, other))
        with e2e.operator_with_token(namespaced_release, tmp_path, namespaces=(watched,)) as operator:
            await elsewhere.create_job("not-mine", nodeSelector=e2e_nodes.selector)
            await scenarios.single_worker_succeeds(here)
            await asyncio.sleep(1.0)  # the operator has long seen both jobs by now
            assert await elsewhere.pods("not-mine") == {} and await elsewhere.status("not-mine") == {}
        assert not operator.forbidden(), "\n".join(operator.forbidden())
    finally:
        for cluster, name in ((here, "single"), (elsewhere, "not-mine")):
            await cluster.delete_job(name)
        await api.close()
