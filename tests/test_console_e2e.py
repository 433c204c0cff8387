"""The console in cluster mode on a real API server, as deployed: `aidi console --mode cluster` as its own
process (what the chart's Deployment runs), outside the cluster, with the API server's CA from the
``kube-root-ca.crt`` ConfigMap (what the pod reads) and a TokenRequest token of the chart's own console
ServiceAccount as its APP KEY issuer — never the admin kubeconfig. Users log in with the first APP KEY
of each of the two teams the ``platform`` fixture installs (`aidi appkey issue`); real RBAC decides what
each sees.

- a team sees only its jobs (pages and JSON API, cookie and bearer), another team's job is a 404;
- an APP KEY made through the console exists on the server (ServiceAccount + RoleBinding), works with the
  real `traincli` with the CA a user downloads from the personal centre, is refused in the other team's
  namespace, and once revoked is gone and refused (401) — `traincli` exits 4 with its message;
- the console's own ServiceAccount can do the APP-KEY things docs/console.md lists and nothing else;
- forged, misappropriated, revoked (the APP KEY above) and expired tokens are refused at login (401 on the
  login page, no session cookie);
- each team's personal centre shows its own dataspace account (read by the console's Role, by name), the
  secret key only in the answer to a POST.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support import e2e
from tests.support.operator import trainjob
from tests.support.processes import ctrl_c_reaches_python

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------------------------------ helpers


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a process run as a user would: no admin kubeconfig, no in-cluster hints, own HOME."""
    env = {k: v for k, v in os.environ.items()
           if k != "KUBECONFIG" and not k.startswith(("KUBERNETES_", "AIDI_", "HITC_"))}
    return env | {"HOME": str(home)}


@dataclass
class ConsoleProcess:
    """`aidi console --mode cluster` in its own process; ``url`` once it has bound its port."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # Ctrl-C: aiohttp's runner cleans up, exit 0
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_console(args: list[str], home: Path) -> ConsoleProcess:
    log = home / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(e2e.BIN / "aidi"), "console", "--mode", "cluster", "--port", "0", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=clean_env(home),
                                preexec_fn=ctrl_c_reaches_python)
    console = ConsoleProcess(proc, log)

    def started() -> str | None:
        assert proc.poll() is None, f"aidi console exited {proc.returncode}:\n{console.output()}"
        found = re.search(r"AIDI console \(cluster mode\) on (http://\S+)", console.output())
        return found.group(1) if found else None

    try:
        console.url = e2e.wait_for(started, timeout=30, what="aidi console to listen")
    except BaseException:
        console.stop()
        raise
    return console


def login(console: ConsoleProcess, token: str) -> requests.Session:
    """A browser-like session: POST /login, keep the cookie (303 to the jobs page)."""
    session = requests.Session()
    r = session.post(f"{console.url}/login", data={"token": token, "next": "/jobs"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/jobs", (r.status_code, r.text[:500])
    assert "aidi_console" in session.cookies
    return session


def csrf_of(session: requests.Session, console: ConsoleProcess) -> str:
    """The session's CSRF token, from a form of the personal centre (docs/console.md: forms carry it)."""
    page = session.get(f"{console.url}/personal")
    assert page.status_code == 200, page.text[:500]
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "no CSRF field on the personal centre"
    return found.group(1)


def team_token(platform: e2e.Platform, team: str) -> str:
    """What a platform engineer hands a team (docs/install.md): APPID:APPKEY."""
    return f"{team}:{platform.team_token(team)}"


def exists(kind: str, name: str, namespace: str) -> bool:
    result = e2e.kubectl("get", kind, name, "-n", namespace, "-o", "name", check=False)
    assert result.returncode == 0 or "NotFound" in result.stderr, result.stderr
    return result.returncode == 0


def can_i(account: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    result = e2e.kubectl("auth", "can-i", verb, resource, f"--as={account}", *where, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), (verb, resource, result.stdout, result.stderr)
    return answer == "yes"


def traincli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `traincli`, as a user runs it: ~/.hobot/gpucluster.yaml in HOME, no kubeconfig."""
    return subprocess.run([str(e2e.BIN / "traincli"), *args], capture_output=True, text=True, timeout=60,
                          env=clean_env(home))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def resigned(token: str, key_pem: bytes, **claims: Any) -> str:
    """A copy of a ServiceAccount JWT with some claims changed, signed RS256 with ``key_pem``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    header, payload, _ = token.split(".")
    body = json.loads(_unb64url(payload)) | claims
    signing_input = f"{header}.{_b64url(json.dumps(body).encode())}"
    key: Any = serialization.load_pem_private_key(key_pem, password=None)
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def refused_at_login(console: ConsoleProcess, token: str) -> str:
    r = requests.post(f"{console.url}/login", data={"token": token, "next": "/jobs"}, allow_redirects=False)
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert "aidi_console" not in r.cookies and 'name="token"' in r.text   # the login page again, no session
    return r.text


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def console(platform: e2e.Platform, s3_server, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ConsoleProcess]:
    """The console as the chart runs it, but outside the cluster: the API server's CA from the
    ``kube-root-ca.crt`` ConfigMap, the issuer token a TokenRequest of the chart's console ServiceAccount."""
    home = tmp_path_factory.mktemp("console-home")
    server = e2e.api_client().configuration.host
    ca = home / "ca.crt"
    ca.write_text(e2e.kubectl("get", "configmap", "kube-root-ca.crt", "-n", platform.namespace,
                              "-o", "jsonpath={.data.ca\\.crt}").stdout)
    issuer = home / "issuer-token"
    issuer.write_text(e2e.create_token(platform.console_service_account, platform.namespace))
    issuer.chmod(0o600)
    running = start_console(["--kube-server", server, "--kube-ca", str(ca), "--issuer-token-file", str(issuer),
                             "--public-server", server, "--dataspace-endpoint", s3_server.endpoint,
                             "--refresh", "1"], home)
    try:
        yield running
    finally:
        running.stop()
    assert running.proc.returncode == 0, running.output()


@pytest.fixture(scope="module")
def jobs(platform: e2e.Platform) -> Iterator[dict[str, str]]:
    """One TrainJob per team namespace, created by the admin as plain CRs (no operator runs here)."""
    suffix = uuid.uuid4().hex[:6]
    made = {team: f"console-{label}-{suffix}" for team, label in zip(platform.teams, ("a", "b"), strict=True)}
    try:
        for team, name in made.items():
            e2e.kubectl("create", "-f", "-", input=json.dumps(trainjob(name, team, gpusPerWorker=2)))
        yield made
    finally:
        for team, name in made.items():
            e2e.kubectl("delete", "trainjobs.aidi.io", name, "-n", team, "--ignore-not-found", "--wait=false",
                        check=False)


# ------------------------------------------------------------------------------------------ tests


def test_each_team_sees_only_its_own_jobs(platform: e2e.Platform, console: ConsoleProcess,
                                          jobs: dict[str, str]) -> None:
    team_a, team_b = platform.teams
    for mine, other in ((team_a, team_b), (team_b, team_a)):
        own, foreign = jobs[mine], jobs[other]
        with login(console, team_token(platform, mine)) as session:
            whoami = session.get(f"{console.url}/api/v1/whoami").json()
            assert whoami["namespace"] == mine and whoami["user"] == f"{mine}/{platform.team_account(mine)}"
            page = session.get(f"{console.url}/jobs")
            assert page.status_code == 200 and own in page.text and foreign not in page.text
            listed = session.get(f"{console.url}/api/v1/jobs")
            assert listed.status_code == 200
            names = [row["name"] for row in listed.json()]
            assert own in names and foreign not in names
            # The job's own page reads its pods and events with the team's token (the Role allows it).
            detail = session.get(f"{console.url}/jobs/{own}")
            assert detail.status_code == 200 and own in detail.text
            assert session.get(f"{console.url}/api/v1/jobs/{own}").json()["row"]["name"] == own
            # The other team's job, by its exact name: not found, and nothing of it shown.
            for path in (f"/jobs/{foreign}", f"/api/v1/jobs/{foreign}"):
                r = session.get(console.url + path)
                assert r.status_code == 404, (path, r.status_code)
                assert "gpusPerWorker" not in r.text and other not in r.text, path
        # Scripts: the same with Authorization: Bearer APPID:APPKEY.
        bearer = {"Authorization": f"Bearer {team_token(platform, mine)}"}
        names = [row["name"] for row in requests.get(f"{console.url}/api/v1/jobs", headers=bearer).json()]
        assert own in names and foreign not in names
        assert requests.get(f"{console.url}/api/v1/jobs/{foreign}", headers=bearer).status_code == 404


def test_an_appkey_made_in_the_console_works_with_traincli_until_revoked(
        platform: e2e.Platform, console: ConsoleProcess, jobs: dict[str, str], tmp_path: Path) -> None:
    team_a, team_b = platform.teams
    token_a = team_token(platform, team_a)
    key_id = ""
    try:
        with login(console, token_a) as session:
            # Mutations with a cookie session need the CSRF header.
            refused = session.post(f"{console.url}/api/v1/appkeys", json={"description": "e2e"})
            assert refused.status_code == 403
            csrf = {"X-CSRF-Token": csrf_of(session, console)}
            made = session.post(f"{console.url}/api/v1/appkeys", json={"description": "e2e laptop"}, headers=csrf)
            assert made.status_code == 201, made.text
            issued = made.json()
            key_id, name = issued["id"], f"appkey-{issued['id']}"
            assert issued["appid"] == team_a and issued["token"] == f"{team_a}:{issued['appkey']}"

            # On the real server: the account (labelled, annotated) and its binding to the team's Role.
            account = json.loads(e2e.kubectl("get", "serviceaccount", name, "-n", team_a, "-o", "json").stdout)
            assert account["metadata"]["labels"]["aidi.io/appkey"] == "true"
            assert account["metadata"]["annotations"]["aidi.io/created-by"] == \
                f"{team_a}/{platform.team_account(team_a)}"
            assert account["metadata"]["annotations"]["aidi.io/description"] == "e2e laptop"
            binding = json.loads(e2e.kubectl("get", "rolebinding", name, "-n", team_a, "-o", "json").stdout)
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aidi-team"}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": team_a}]
            assert not exists("serviceaccount", name, team_b)
            assert key_id in [k["id"] for k in session.get(f"{console.url}/api/v1/appkeys").json()]
            # The key logs in to the console too, as itself.
            key_session = login(console, issued["token"])
            assert key_session.get(f"{console.url}/api/v1/whoami").json()["user"] == f"{team_a}/{name}"

            # The user's workstation: the snippet in ~/.hobot/gpucluster.yaml, and the cluster's CA from
            # "Download the cluster's CA certificate" where the snippet's placeholder says.
            snippet = yaml.safe_load(issued["gpucluster_yaml"])
            entry = snippet["clusters"][snippet["current-cluster"]]
            assert entry["appid"] == team_a and entry["appkey"] == issued["appkey"]
            assert entry["server"] == e2e.api_client().configuration.host
            assert entry["certificate-authority"] == "/path/to/aidi-ca.crt"   # a placeholder to fill in
            ca = session.get(f"{console.url}/personal/ca.crt")
            assert ca.status_code == 200 and ca.content.startswith(b"-----BEGIN CERTIFICATE-----")
            home = tmp_path / "home"
            (home / ".hobot").mkdir(parents=True)
            (home / "aidi-ca.crt").write_bytes(ca.content)
            config = home / ".hobot" / "gpucluster.yaml"
            config.write_text(issued["gpucluster_yaml"].replace("/path/to/aidi-ca.crt", str(home / "aidi-ca.crt")))
            config.chmod(0o600)

            listed = traincli(home, "list")
            assert listed.returncode == 0, listed.stderr
            assert jobs[team_a] in listed.stdout and jobs[team_b] not in listed.stdout
            # The key has exactly the team's rights: the other team's namespace is refused (403).
            other = traincli(home, "list", "-n", team_b)
            assert other.returncode == 4, (other.returncode, other.stdout, other.stderr)
            assert "refused our credential (403" in other.stderr and jobs[team_b] not in other.stdout

            # Revoke: the account and its binding are gone; the API server refuses the token (401).
            revoked = session.delete(f"{console.url}/api/v1/appkeys/{key_id}", headers=csrf)
            assert revoked.status_code == 200 and revoked.json() == {"revoked": key_id}
            assert not exists("serviceaccount", name, team_a) and not exists("rolebinding", name, team_a)
            assert key_id not in [k["id"] for k in session.get(f"{console.url}/api/v1/appkeys").json()]
            # At once the key may do nothing (its RoleBinding is gone: 403); the API server then refuses the
            # token itself (401) once its authentication cache lets go of it (kube-apiserver keeps a token's
            # successful authentication for up to 10 s).
            first = traincli(home, "list")
            assert first.returncode == 4 and re.search(r"refused our credential \((401|403) ", first.stderr), \
                (first.returncode, first.stdout, first.stderr)
            after = first if "(401 " in first.stderr else e2e.wait_for(
                lambda: (r := traincli(home, "list")).returncode != 0 and "(403 " not in r.stderr and r,
                timeout=20, interval=1, what="the API server to refuse the revoked APP KEY (401)")
            assert after.returncode == 4, (after.returncode, after.stdout, after.stderr)
            assert after.stderr.startswith("traincli: error: ") and "refused our credential (401" in after.stderr
            assert "traincli init -t APPID:APPKEY" in after.stderr and jobs[team_a] not in after.stdout
            # ... and so does the console: the key's session ends, a new login with it is a 401.
            e2e.wait_for(lambda: key_session.get(f"{console.url}/api/v1/jobs").status_code == 401, timeout=15,
                         what="the revoked key's console session to end")
            assert key_session.get(f"{console.url}/api/v1/whoami").status_code == 401   # the session is gone
            key_session.close()
            assert "refused this token" in refused_at_login(console, issued["token"])
            # The user's own session is untouched by revoking a key.
            assert session.get(f"{console.url}/api/v1/jobs").status_code == 200
        # The token was shown once and is never logged.
        assert issued["appkey"] not in console.output() and platform.team_token(team_a) not in console.output()
    finally:
        if key_id:
            for kind in ("rolebinding", "serviceaccount"):
                e2e.kubectl("delete", kind, f"appkey-{key_id}", "-n", team_a, "--ignore-not-found", check=False)


def test_the_consoles_own_service_account_may_only_manage_appkeys(platform: e2e.Platform) -> None:
    """`kubectl auth can-i --as` the chart's console ServiceAccount: exactly docs/console.md's RBAC table."""
    me = f"system:serviceaccount:{platform.namespace}:{platform.console_service_account}"
    expected: dict[tuple[str, str, str | None], bool] = {}
    for team in platform.teams:
        # It never reads with its own rights: no TrainJob, pod, log, event or Secret — but for the team's
        # dataspace Secret, by name, which a member's key may not read (docs/security.md).
        for verb, resource in (("get", "trainjobs.aidi.io"), ("list", "trainjobs.aidi.io"),
                               ("create", "trainjobs.aidi.io"), ("get", "pods"), ("list", "pods"),
                               ("get", "pods/log"), ("list", "events"), ("get", "secrets"), ("list", "secrets"),
                               ("get", "secrets/traincli-token"), ("delete", "secrets/aidi-dataspace"),
                               ("get", "configmaps")):
            expected[verb, resource, team] = False
        expected["get", "secrets/aidi-dataspace", team] = True
        # What the table lists, and only that.
        for verb, resource in (("get", "serviceaccounts"), ("list", "serviceaccounts"),
                               ("create", "serviceaccounts"), ("patch", "serviceaccounts"),
                               ("delete", "serviceaccounts"), ("create", "serviceaccounts/token"),
                               ("create", "rolebindings.rbac.authorization.k8s.io"),
                               ("delete", "rolebindings.rbac.authorization.k8s.io"),
                               ("bind", "roles.rbac.authorization.k8s.io/aidi-team")):
            expected[verb, resource, team] = True
        for verb, resource in (("update", "serviceaccounts"), ("watch", "serviceaccounts"),
                               ("get", "rolebindings.rbac.authorization.k8s.io"),
                               ("update", "rolebindings.rbac.authorization.k8s.io"),
                               ("bind", "roles.rbac.authorization.k8s.io/admin"),
                               ("bind", "clusterroles.rbac.authorization.k8s.io/admin"),
                               ("escalate", "roles.rbac.authorization.k8s.io"),
                               ("create", "roles.rbac.authorization.k8s.io")):
            expected[verb, resource, team] = False
    # Only in the team namespaces: not in its own, not elsewhere, nothing cluster-wide.
    for namespace in (platform.namespace, "default", "kube-system"):
        for verb, resource in (("create", "serviceaccounts"), ("create", "serviceaccounts/token"),
                               ("create", "rolebindings.rbac.authorization.k8s.io")):
            expected[verb, resource, namespace] = False
    for verb, resource in (("list", "namespaces"), ("list", "trainjobs.aidi.io"), ("list", "secrets"),
                           ("create", "clusterrolebindings.rbac.authorization.k8s.io")):
        expected[verb, resource, None] = False
    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(expected, pool.map(lambda check: can_i(me, *check), expected), strict=True))
    wrong = {check: answer for check, answer in answers.items() if answer != expected[check]}
    assert not wrong, f"the console's ServiceAccount may (True) / may not (False), against docs/console.md: {wrong}"


def test_the_consoles_own_token_reads_nothing_on_the_real_server(platform: e2e.Platform, jobs: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """Not only what RBAC says it would decide: real requests with the issuer's token are refused (403)."""
    token = e2e.create_token(platform.console_service_account, platform.namespace, seconds=600)
    kubeconfig = e2e.token_kubeconfig(tmp_path / "console.kubeconfig", token, platform.teams[0])
    for resource in ("trainjobs.aidi.io", "pods", "secrets"):
        result = e2e.kubectl("get", resource, "-n", platform.teams[0], kubeconfig=kubeconfig, check=False)
        assert result.returncode != 0 and "Forbidden" in result.stderr, (resource, result.stderr)
    assert jobs[platform.teams[0]] not in result.stdout


def test_forged_and_misused_tokens_are_refused_at_login(platform: e2e.Platform, console: ConsoleProcess) -> None:
    """A refused token is a 401 on the login page and no session (docs/console.md, "Logging in")."""
    team_a, team_b = platform.teams
    real_a, real_b = platform.team_token(team_a), platform.team_token(team_b)
    assert "refused this token" in refused_at_login(console, f"{team_a}:not-a-token")
    # A real token with its payload changed to claim the other team: the signature no longer matches.
    header, payload, signature = real_a.split(".")
    claims = json.loads(_unb64url(payload))
    claims["sub"] = f"system:serviceaccount:{team_b}:traincli"
    forged = f"{header}.{_b64url(json.dumps(claims).encode())}.{signature}"
    assert f"refused this token for namespace {team_b}" in refused_at_login(console, f"{team_b}:{forged}")
    # Team B's genuine token, claiming team A's namespace: the server forbids it (403), the console refuses.
    assert f"refused this token for namespace {team_a}" in refused_at_login(console, f"{team_a}:{real_b}")
    assert "APPID:APPKEY" in refused_at_login(console, real_a)   # no APPID
    # The bearer route refuses the same, with the JSON error and the WWW-Authenticate header.
    r = requests.get(f"{console.url}/api/v1/jobs", headers={"Authorization": f"Bearer {team_b}:{forged}"})
    assert r.status_code == 401 and "refused" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def _signing_key() -> bytes | None:
    """The service-account signing key of ../shared/k8s/control-plane, beside its kubeconfig (other clusters
    keep theirs to themselves)."""
    key = Path(e2e.kubeconfig_path()).parent / "pki" / "sa.key"
    with contextlib.suppress(OSError):
        return key.read_bytes()
    return None


def test_an_expired_token_is_refused_at_login(platform: e2e.Platform, console: ConsoleProcess) -> None:
    """A genuine token of the team's account, its expiry moved into the past and re-signed with the cluster's
    own key: the same token with a future expiry logs in (so only the expiry differs), the expired one not."""
    key = _signing_key()
    if key is None:
        pytest.skip("needs the cluster's service-account signing key (only ../shared/k8s/control-plane shows it)")
    team_a = platform.teams[0]
    genuine = e2e.create_token(platform.team_account(team_a), team_a, seconds=600)
    now = int(time.time())
    valid = resigned(genuine, key, iat=now - 60, nbf=now - 60, exp=now + 600)
    with login(console, f"{team_a}:{valid}") as session:
        assert session.get(f"{console.url}/api/v1/whoami").json()["namespace"] == team_a
    expired = resigned(genuine, key, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    assert f"refused this token for namespace {team_a}" in refused_at_login(console, f"{team_a}:{expired}")


def test_each_team_gets_its_own_dataspace_account_and_the_secret_key_only_on_request(
        platform: e2e.Platform, console: ConsoleProcess, s3_server) -> None:
    """The console reads a team's aidi-dataspace with its own Role (by name; the member's key may not), shows the
    access key and bucket, and the secret key only in the answer to a POST with the form's CSRF token."""
    for team, account in zip(platform.teams, s3_server.teams.values(), strict=True):
        other = next(a for a in s3_server.teams.values() if a is not account)
        with login(console, team_token(platform, team)) as session:
            page = session.get(f"{console.url}/personal").text
            assert account.access_key in page and f"--bucket {account.bucket}" in page
            assert account.secret_key not in page and other.access_key not in page
            assert session.post(f"{console.url}/personal/dataspace-token").status_code == 403   # no CSRF token
            revealed = session.post(f"{console.url}/personal/dataspace-token", data={"csrf": csrf_of(session, console)})
            assert revealed.status_code == 200 and f'id="dataspace-token">{account.token}</code>' in revealed.text
            assert other.secret_key not in revealed.text
    assert not any(a.secret_key in console.output() for a in s3_server.teams.values())   # never logged
