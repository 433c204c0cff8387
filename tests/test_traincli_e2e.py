"""`traincli` and `kubectl` as a team member uses them, on a real API server with the chart installed for real.

A team member's workstation is set up exactly as docs/install.md says: the admin issues the team's APP KEY
(`aidi appkey issue`), reads the cluster's CA from the ConfigMap ``kube-root-ca.crt`` and the team's
dataspace token and bucket from ``aidi-dataspace``; the member runs ``traincli init -t -`` and ``hitc init
-t -``. Then the real ``traincli`` console script runs as a subprocess with that HOME and no KUBECONFIG, so
every request carries the member's APP KEY (never the admin's credential). The operator runs as deployed
(its own process, the chart's ServiceAccount); the real scheduler binds the pods to this run's GPU nodes
and the test plays their kubelet.

Covered: submit (both forms: AIDI's train_job.yaml and a TrainJob with ``aidi.io/upload-dir``), list,
status, wait (exit codes 0, 1, 3, 124, 125), cancel, delete; RBAC between teams; ``kubectl apply`` of
examples/trainjob.yaml, ``kubectl get tj`` columns, ``kubectl explain`` and the CRD's schema validation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aidi_operator.kube import KubeApi

from aidi.api import trainjob as tj
from aidi.cluster import gpucluster
from tests.support import e2e
from tests.support.operator import ScheduledCluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BIN = e2e.BIN


# ---------------------------------------------------------------------------------------- a team member


@dataclass
class Member:
    """A team member's workstation: its own HOME (gpucluster.yaml, ~/.olympus) and nothing of the admin's."""

    team: str
    home: Path
    kubeconfig: Path  # the same team token, for kubectl (e2e.token_kubeconfig)

    def env(self) -> dict[str, str]:
        # No KUBECONFIG (conftest points it at the admin's), no AIDI_* overrides, no in-cluster hints.
        env = {k: v for k, v in os.environ.items()
               if k != "KUBECONFIG" and not k.startswith(("AIDI_", "KUBERNETES_"))}
        return env | {"HOME": str(self.home)}

    def traincli(self, *args: str | Path, input: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self._run("traincli", *args, input=input, timeout=timeout)

    def hitc(self, *args: str | Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._run("hitc", *args, input=input)

    def _run(self, exe: str, *args: str | Path, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / exe), *map(str, args)], input=input, capture_output=True, text=True,
                              env=self.env(), cwd=self.home, timeout=timeout)

    def start_traincli(self, *args: str) -> subprocess.Popen[str]:
        """A long-running command (`wait`): read it with ``finish``."""
        return subprocess.Popen([str(BIN / "traincli"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env(), cwd=self.home)

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return e2e.kubectl(*args, kubeconfig=str(self.kubeconfig), input=input, check=False)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not end in {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def concurrently(*commands: Callable[[], subprocess.CompletedProcess[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent CLI runs side by side (each one is mostly Python start-up)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: command(), commands))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, once it exited 0."""
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command's one-line error, once it exited ``code``."""
    assert result.returncode == code, f"{result.args} exited {result.returncode}, not {code}:\n" \
                                      f"{result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("traincli: error: ") and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def admin_secret_data(namespace: str, name: str, key: str) -> str:
    encoded = e2e.kubectl("get", "secret", name, "-n", namespace, "-o", f"jsonpath={{.data.{key}}}").stdout
    return base64.b64decode(encoded).decode()


def admin_get(kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    got = e2e.kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", check=False)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout) if got.stdout.strip() else None


def admin_server() -> str:
    """The API server URL, as docs/install.md reads it from the admin's kubeconfig."""
    return e2e.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout


class Members:
    """One workstation per team, set up once per module (`traincli init`, `hitc init`, as the docs say)."""

    def __init__(self, platform: e2e.Platform, root: Path) -> None:
        self.platform = platform
        self.root = root
        self._members: dict[str, Member] = {}
        self.init_outputs: dict[str, str] = {}

    def __call__(self, team: str, dataspace: bool = True) -> Member:
        if team not in self._members:
            self._members[team] = self._onboard(team)
        member = self._members[team]
        if dataspace and not (member.home / ".olympus" / "config.yaml").exists():
            # `hitc init` with the team's own dataspace account and bucket, read by the admin from the team's
            # Secret aidi-dataspace (the storage limits the account to that bucket).
            token = (f"{admin_secret_data(team, 'aidi-dataspace', 'accessKey')}:"
                     f"{admin_secret_data(team, 'aidi-dataspace', 'secretKey')}")
            ok(member.hitc("init", "-t", "-", "--endpoint", self.platform.s3_endpoint, "--bucket",
                           admin_secret_data(team, "aidi-dataspace", "bucket"), input=token + "\n"))
        return member

    def _onboard(self, team: str) -> Member:
        home = self.root / team
        home.mkdir()
        # The admin's part (docs/install.md, "Hand out gpucluster.yaml and the hitc token").
        ca = home / f"{team}-ca.crt"
        ca.write_text(e2e.kubectl("get", "configmap", "kube-root-ca.crt", "-n", team, "-o",
                                  r"jsonpath={.data.ca\.crt}").stdout)
        appkey = self.platform.team_token(team)
        member = Member(team, home, e2e.token_kubeconfig(home / "kubeconfig", appkey, team))
        # The member's part: tokens on stdin, so they stay out of `ps`.
        out = ok(member.traincli("init", "-t", "-", "--server", admin_server(), "--certificate-authority", ca,
                                 input=f"{team}:{appkey}\n"))
        assert appkey not in out
        self.init_outputs[team] = out
        return member


@pytest.fixture(scope="module")
def members(platform: e2e.Platform, tmp_path_factory: pytest.TempPathFactory) -> Members:
    return Members(platform, tmp_path_factory.mktemp("members"))


@pytest.fixture()
def team_a(members: Members, platform: e2e.Platform) -> Member:
    return members(platform.teams[0])


@pytest.fixture()
def team_b(members: Members, platform: e2e.Platform) -> Member:
    return members(platform.teams[1], dataspace=False)  # team-b's member never submits code here


# ------------------------------------------------------------------------------- the admin's side


@pytest.fixture()
async def admin() -> AsyncIterator[KubeApi]:
    api = KubeApi(e2e.connection)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture()
def cleanup() -> Iterator[Callable[[str, str], None]]:
    """``cleanup(namespace, job)``: the job and its Secret are deleted at the end, whatever happened."""
    made: list[tuple[str, str]] = []
    yield lambda namespace, job: made.append((namespace, job))
    for namespace, job in made:
        e2e.kubectl("delete", "trainjob", job, "-n", namespace, "--ignore-not-found", "--wait=false", check=False)
        e2e.kubectl("delete", "secret", f"{job}-code", "-n", namespace, "--ignore-not-found", check=False)


@contextlib.contextmanager
def operator(platform: e2e.Platform, tmp: Path) -> Iterator[e2e.OperatorProcess]:
    """The operator as deployed; a request its RBAC refused fails the test."""
    with e2e.operator_with_token(platform, tmp) as running:
        yield running
    assert not running.forbidden(), "the chart's RBAC refused the operator:\n" + "\n".join(running.forbidden())


def rows(table: str) -> list[list[str]]:
    """A column table (traincli list, kubectl get) as rows of fields."""
    return [line.split() for line in table.splitlines() if line.strip()]


def unwrap(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- tests


def test_a_team_member_is_set_up_as_the_docs_say(team_a: Member, members: Members) -> None:
    """`traincli init -t -` with the team's token and CA writes gpucluster.yaml 0600; TLS is really checked."""
    config_file = team_a.home / ".hobot" / "gpucluster.yaml"
    assert config_file.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(config_file.read_text())
    entry = config["clusters"]["mycluster1"]
    assert config["current-cluster"] == "mycluster1"
    assert entry["appid"] == team_a.team and entry["server"] == admin_server()
    assert Path(entry["certificate-authority"]) == team_a.home / f"{team_a.team}-ca.crt"
    assert entry["appkey"].count(".") == 2  # a JWT: the ServiceAccount token
    expires = gpucluster.token_expiry(entry["appkey"])
    assert expires is not None  # an APP KEY always expires
    assert members.init_outputs[team_a.team].strip() == (
        f"wrote {config_file} (mode 0600): current-cluster mycluster1, namespace {team_a.team}, "
        f"via {admin_server()} with a bearer token; the APP KEY expires {expires:%Y-%m-%d %H:%M} UTC")
    assert (team_a.home / ".olympus" / "config.yaml").stat().st_mode & 0o777 == 0o600

    # The same entry without the CA (the system's CAs do not know the cluster's) and with a token the
    # server does not know, written by hand as docs/traincli.md describes the file.
    other = team_a.home / "other-gpucluster.yaml"
    other.write_text(yaml.safe_dump({"clusters": {
        "no-ca": {k: v for k, v in entry.items() if k != "certificate-authority"},
        "bad-token": entry | {"appkey": "not-a-token"}}}))
    no_ca, bad_token = concurrently(lambda: team_a.traincli("list", "-c", other, "--current-cluster", "no-ca"),
                                    lambda: team_a.traincli("list", "-c", other, "--current-cluster", "bad-token"))
    # The server's certificate is really checked: exit 5 (cannot reach), not a silent pass.
    error = refused(no_ca, 5)
    assert "cannot reach the cluster's API server" in error and "CERTIFICATE_VERIFY_FAILED" in error, error
    assert "the cluster refused our credential (401 Unauthorized)" in refused(bad_token, 4)


async def test_submit_the_aidi_example_follow_it_to_success_and_delete_it(
        team_a: Member, team_b: Member, members: Members, platform: e2e.Platform, e2e_nodes: e2e.Kubelet,
        admin: KubeApi, cleanup: Callable[[str, str], None], tmp_path: Path) -> None:
    """`traincli submit -f examples/train_job.yaml` (docs/install.md's first job), then list, status, wait, delete."""
    job, ns = "adasmini-4pe", team_a.team
    cleanup(ns, job)
    submitted = ok(team_a.traincli("submit", "-f", EXAMPLES / "train_job.yaml"))
    lines = submitted.splitlines()
    assert lines[0] == f"submitted TrainJob {job} to cluster mycluster1 (namespace {ns})"
    match = re.fullmatch(r"code package: (\d+) files, .+ encrypted, at (s3://\S+)", lines[1])
    assert match, submitted
    uri = match[2]
    bucket = admin_secret_data(ns, "aidi-dataspace", "bucket")   # the team's own bucket
    assert uri.startswith(f"s3://{bucket}/codepkgs/{ns}/{job}/") and uri.endswith(".tar.gz.enc")
    assert f"traincli wait {job}" in submitted and f"traincli cancel {job}" in submitted

    # What landed on the server: the CR points at the package, the password is only in the Secret.
    created = admin_get("trainjob", job, ns)
    assert created is not None
    package = created["spec"]["codePackage"]
    assert package["uri"] == uri and uri.endswith(f"/{package['sha256']}.tar.gz.enc")
    assert package["passwordSecretRef"] == {"name": f"{job}-code", "key": "password"}
    assert created["spec"]["gpusPerWorker"] == 4 and created["spec"]["priority"] == 5
    assert "change-me" not in json.dumps(created) and "change-me" not in submitted
    secret = admin_get("secret", f"{job}-code", ns)
    assert secret is not None and base64.b64decode(secret["data"]["password"]) == b"change-me"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert admin_get("secret", f"{job}-code", team_b.team) is None

    # The package decrypts with the Secret's password, as the pods' fetch-code step does it, with the
    # environment a job pod of the team gets (its Secret aidi-dataspace); another team's account is refused.
    password = tmp_path / "password"
    password.write_text("change-me\n")

    def fetch(team: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "aidi"), "fetch-code", uri, "--password-file", str(password), "--dest", str(tmp_path / team)],
            capture_output=True, text=True, timeout=60, env=team_a.env() | {
                "AIDI_DATASPACE_ENDPOINT": platform.s3_endpoint, "AIDI_DATASPACE_BUCKET": "aidi",
                "AIDI_DATASPACE_TEAM_BUCKET": admin_secret_data(team, "aidi-dataspace", "bucket"),
                "AIDI_DATASPACE_ACCESS_KEY": admin_secret_data(team, "aidi-dataspace", "accessKey"),
                "AIDI_DATASPACE_SECRET_KEY": admin_secret_data(team, "aidi-dataspace", "secretKey")})

    ok(fetch(ns))
    stolen = fetch(team_b.team)
    assert stolen.returncode == 4 and stolen.stderr.startswith(f"aidi: error: access denied to s3://{bucket}/"), \
        stolen.stderr
    assert "your dataspace credential is for team team-b" in stolen.stderr and "Traceback" not in stolen.stderr
    (tmp_path / "code").symlink_to(tmp_path / ns)
    source = EXAMPLES / "auto_matrix_development_toolkit"
    assert (tmp_path / "code" / "run.sh").read_bytes() == (source / "run.sh").read_bytes()
    assert int(match[1]) == sum(1 for p in source.rglob("*") if p.is_file() or p.is_symlink())

    status = ok(team_a.traincli("status", job))
    assert f"job:        {ns}/{job}\nphase:      Pending\n" in status
    assert "why:        the operator has not picked the job up yet" in status

    # The AIDI form has no node selector (docs/trainjob.md: that is the CR form's): the admin adds
    # this run's GPU nodes before the operator makes pods.
    e2e.kubectl("patch", "trainjob", job, "-n", ns, "--type=merge",
                "-p", json.dumps({"spec": {"nodeSelector": e2e_nodes.selector}}))
    cluster = ScheduledCluster(admin, ns, e2e_nodes.selector)
    with operator(platform, tmp_path):
        waiting = team_a.start_traincli("wait", job, "--interval", "0.3")
        await cluster.wait_pods(job, [f"{job}-worker-0"], timeout=20)
        await cluster.wait_phase(job, "Pending", timeout=20)

        await cluster.run_pod(f"{job}-worker-0")
        running = await cluster.wait_phase(job, "Running", timeout=20)
        status = ok(team_a.traincli("status", job))
        assert f"phase:      Running — {running['reason']}\n" in status
        assert f"message:    {running['message']}\n" in status and running["message"] == "1/1 worker running"
        assert f"started:    {running['startTime']}" in status
        pod = (await cluster.pods(job))[f"{job}-worker-0"]
        containers = len(pod["spec"]["containers"])  # the trainer, and sync-output for DATA_SPACE.OUTPUT
        assert re.search(rf"^  {job}-worker-0 +worker +Running +ready 1/{containers} +restarts 0  node "
                         rf"{re.escape(pod['spec']['nodeName'])}$", status, re.M), status
        assert pod["spec"]["nodeName"] in e2e_nodes.nodes
        listed = rows(ok(team_a.traincli("list")))
        assert listed[0] == ["NAME", "PHASE", "WORKERS", "GPUS", "PRIO", "STEP", "ETA", "STARTED", "REASON"]
        row = next(r for r in listed if r[0] == job)
        # No progress records yet (this "trainer" logs nothing): STEP and ETA say so.
        assert row == [job, "Running", "1/1", "4", "5", "-", "-", running["startTime"], "AllWorkersRunning"]

        await cluster.finish_pod(f"{job}-worker-0")
        done = finish(waiting)
        assert done.returncode == 0, done.stderr
        succeeded = await cluster.wait_phase(job, "Succeeded")
        assert re.fullmatch(rf"{job}: Succeeded \({re.escape(succeeded['reason'])}: "
                            rf"{re.escape(succeeded['message'])}\) after \d+s\n", done.stdout), done.stdout
        assert succeeded["message"].startswith("1/1 worker succeeded")
        # Each phase change on stderr, in order.
        phases = [line.removeprefix(f"{job}: ") for line in done.stderr.splitlines()]
        assert phases[-2:] == ["Running", "Succeeded"] and phases[0] in ("Pending", "Running"), done.stderr

    # A finished job cannot be cancelled; delete removes the job and its Secret (docs/traincli.md).
    error = refused(team_a.traincli("cancel", job), 2)
    assert f"job {job} already Succeeded; nothing to cancel" in error
    # The key may not touch Secrets: the job's own (owned by it) goes with it, by the garbage collector.
    deleted = ok(team_a.traincli("delete", job))
    assert deleted == f"deleted trainjob/{job} (its pods go with it)\n"
    assert admin_get("trainjob", job, ns) is None
    e2e.wait_for(lambda: admin_get("secret", f"{job}-code", ns) is None, timeout=30,
                 what="the garbage collector to remove the job's Secret (the key may not)")
    await cluster.wait_pods(job, [], timeout=30)  # the garbage collector, by owner references
    assert f"no TrainJob '{job}' in namespace {ns}" in refused(team_a.traincli("status", job), 3)


async def test_a_failing_job_makes_wait_exit_1_with_the_reason(
        team_a: Member, platform: e2e.Platform, e2e_nodes: e2e.Kubelet, admin: KubeApi,
        cleanup: Callable[[str, str], None], tmp_path: Path) -> None:
    """The CR form with `aidi.io/upload-dir` (and a node selector): a worker exits 3, the job fails at once."""
    job, ns = f"fails-{uuid.uuid4().hex[:6]}", team_a.team
    cleanup(ns, job)
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text("#!/bin/bash\nexit 3\n")
    (code / "data").mkdir()
    (code / "data" / "big.params").write_bytes(b"\0" * 1024)
    (code / ".aidiignore").write_text("data/\n")
    (tmp_path / "password").write_text("s3cret-pass\n")
    manifest = {"apiVersion": tj.API_VERSION, "kind": tj.KIND,
                "metadata": {"name": job, "annotations": {"aidi.io/upload-dir": "./code"}},
                "spec": {"command": ["bash", "-c", "${WORKING_PATH}/run.sh"], "gpusPerWorker": 1,
                         "restartPolicy": "Never", "nodeSelector": e2e_nodes.selector}}
    (tmp_path / "trainjob.yaml").write_text(yaml.safe_dump(manifest))

    cluster = ScheduledCluster(admin, ns, e2e_nodes.selector)
    with operator(platform, tmp_path):
        submitted = ok(team_a.traincli("submit", "-f", tmp_path / "trainjob.yaml",
                                       "--password-file", tmp_path / "password"))
        assert "code package: 2 files" in submitted and "s3cret-pass" not in submitted  # run.sh, .aidiignore
        assert admin_get("secret", f"{job}-code", ns) is not None
        waiting = team_a.start_traincli("wait", job, "--interval", "0.3")
        await cluster.wait_pods(job, [f"{job}-worker-0"], timeout=20)
        await cluster.run_pod(f"{job}-worker-0")
        await cluster.wait_phase(job, "Running", timeout=20)
        await cluster.finish_pod(f"{job}-worker-0", exit_code=3)
        done = finish(waiting)
        failed = await cluster.wait_phase(job, "Failed")

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "worker-0 exited with code 3" in failed["message"]
    assert re.fullmatch(rf"{job}: Failed \({re.escape(failed['reason'])}: {re.escape(failed['message'])}\) "
                        r"after \d+s\n", done.stdout), done.stdout
    status = ok(team_a.traincli("status", job))
    assert f"phase:      Failed — {failed['reason']}\n" in status
    assert f"last failure: pod {job}-worker-0 Error exit code 3" in status
    assert "→ the container exited with code 3; the container exited with an error" in status
    assert json.loads(ok(team_a.traincli("delete", job, "--json"))) == {"deleted": [f"trainjob/{job}"]}
    assert admin_get("trainjob", job, ns) is None
    e2e.wait_for(lambda: admin_get("secret", f"{job}-code", ns) is None, timeout=30,
                 what="the garbage collector to remove the job's Secret")


async def test_the_team_credential_is_not_admin(team_a: Member, team_b: Member,
                                                cleanup: Callable[[str, str], None], tmp_path: Path) -> None:
    """team-a's token works in team-a only: team-b's jobs and Secrets are refused (exit 4), not just hidden."""
    job = f"private-{uuid.uuid4().hex[:6]}"
    cleanup(team_a.team, job)
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text("echo hi\n")
    job_file = tmp_path / "train_job.yaml"
    job_file.write_text(yaml.safe_dump({
        "REQUIRED": {"JOB_NAME": job, "JOB_PASSWD": "team-a-only", "UPLOAD_DIR": "./code", "PROJECT_ID": "P1",
                     "WORKER_MIN_NUM": 1, "WORKER_MAX_NUM": 1, "GPU_PER_WORKER": 1,
                     "RUN_SCRIPTS": "${WORKING_PATH}/run.sh"}}))
    ok(team_a.traincli("submit", "-f", job_file))
    assert admin_secret_data(team_a.team, f"{job}-code", "password") == "team-a-only"
    assert admin_get("secret", f"{job}-code", team_b.team) is None
    assert admin_get("trainjob", job, team_b.team) is None

    a_list, a_status, b_status, b_delete = concurrently(
        lambda: team_a.traincli("list", "-n", team_b.team), lambda: team_a.traincli("status", job, "-n", team_b.team),
        lambda: team_b.traincli("status", job), lambda: team_b.traincli("delete", job, "-n", team_a.team))
    # team-a's member aims at team-b: the server refuses, and the CLI says so (exit 4).
    error = refused(a_list, 4)
    assert error.strip() == (
        f"traincli: error: list TrainJobs in {team_b.team}: the cluster refused our credential (403 Forbidden); "
        "check the appkey in gpucluster.yaml (`traincli init -t APPID:APPKEY`) or your kubeconfig, and that it "
        "may use this namespace")
    assert f"get TrainJob {job}: the cluster refused our credential (403 Forbidden)" in \
        refused(a_status, 4)
    # team-b's member can neither see nor delete team-a's job.
    assert f"no TrainJob '{job}' in namespace {team_b.team}" in refused(b_status, 3)
    assert f"get TrainJob {job}: the cluster refused our credential (403 Forbidden)" in refused(b_delete, 4)
    assert admin_get("trainjob", job, team_a.team) is not None
    # And kubectl with the same token: no Secrets of the other team.
    denied = team_a.kubectl("get", "secret", "aidi-dataspace", "-n", team_b.team)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    can = team_a.kubectl("auth", "can-i", "list", "trainjobs.aidi.io", "-n", team_b.team)
    assert can.stdout.strip() == "no"

    assert ok(team_a.traincli("delete", job)) == f"deleted trainjob/{job} (its pods go with it)\n"
    e2e.wait_for(lambda: admin_get("secret", f"{job}-code", team_a.team) is None, timeout=30,
                 what="the garbage collector to remove the job's Secret")


async def test_kubectl_apply_the_example_get_tj_and_cancel_it_with_traincli(
        team_b: Member, platform: e2e.Platform, e2e_nodes: e2e.Kubelet, admin: KubeApi,
        cleanup: Callable[[str, str], None], tmp_path: Path) -> None:
    """examples/trainjob.yaml applied with the team's kubeconfig; `kubectl get tj` columns; traincli cancel."""
    job, ns = "adasmini-4pe", team_b.team
    cleanup(ns, job)
    manifest = yaml.safe_load((EXAMPLES / "trainjob.yaml").read_text())
    manifest["metadata"]["namespace"] = ns  # the example's team-a is a placeholder
    manifest["spec"]["nodeSelector"] = e2e_nodes.selector  # this run's GPU nodes
    applied = team_b.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(manifest))
    assert applied.returncode == 0 and applied.stdout.strip() == f"trainjob.aidi.io/{job} created", applied.stderr

    got = team_b.kubectl("get", "tj")
    # STEP and ETA come from status.progress (docs/progress.md); empty until the trainer logs progress.
    assert rows(got.stdout)[0] == ["NAME", "PHASE", "WORKERS", "GPUS", "STEP", "ETA", "AGE"], got.stdout

    cluster = ScheduledCluster(admin, ns, e2e_nodes.selector)
    with operator(platform, tmp_path):
        await cluster.wait_pods(job, [f"{job}-worker-0"], timeout=20)
        await cluster.run_pod(f"{job}-worker-0")
        running = await cluster.wait_phase(job, "Running", timeout=20)
        row = next(r for r in rows(ok(team_b.kubectl("get", "tj"))) if r[0] == job)
        assert row[:4] == [job, "Running", "1", "4"] and re.fullmatch(r"\d+s", row[4]), row
        wide = rows(ok(team_b.kubectl("get", "tj", "-o", "wide")))
        assert wide[0] == ["NAME", "PHASE", "WORKERS", "GPUS", "STEP", "EPOCH", "LOSS", "ETA", "PRIORITY", "REASON",
                           "AGE"]
        assert next(r for r in wide if r[0] == job)[:6] == [job, "Running", "1", "4", "5", running["reason"]]

        timed_out = team_b.traincli("wait", job, "--timeout", "1", "--interval", "0.2")
        assert timed_out.returncode == 124, timed_out.stderr
        assert timed_out.stdout.startswith(f"{job}: timed out (Timeout: still Running after 1s)")

        cancelled = ok(team_b.traincli("cancel", job))
        assert cancelled.startswith(f"cancelled job {job} (was Running): its pods are being stopped; the record stays")
        stored = admin_get("trainjob", job, ns)
        assert stored is not None and stored["spec"]["suspend"] is True
        assert stored["metadata"]["annotations"]["aidi.io/cancelled-at"]
        suspended = await cluster.wait_phase(job, "Suspended", timeout=20)
        await cluster.wait_pods(job, [], timeout=30)
        status = ok(team_b.traincli("status", job))
        assert f"phase:      Suspended (cancelled) — {suspended['reason']}\n" in status
        assert "why:        cancelled with `traincli cancel`" in status
        assert next(r for r in rows(ok(team_b.traincli("list"))) if r[0] == job)[1] == "Cancelled"
        waited = team_b.traincli("wait", job, "--interval", "0.2")
        assert waited.returncode == 125 and waited.stdout.startswith(f"{job}: Cancelled"), waited
        row = next(r for r in rows(ok(team_b.kubectl("get", "tj"))) if r[0] == job)
        assert row[1] == "Suspended"

    # No Secret was made for a kubectl-applied job: delete removes only the TrainJob.
    assert ok(team_b.traincli("delete", job)) == f"deleted trainjob/{job} (its pods go with it)\n"
    gone = team_b.kubectl("get", "tj", job)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_kubectl_explain_shows_the_field_docs_of_the_models(team_a: Member) -> None:
    """`kubectl explain` (the team's kubeconfig) reads the CRD schema generated from aidi/api/trainjob.py."""
    spec = ok(team_a.kubectl("explain", "trainjob.spec"))
    assert "KIND:       TrainJob" in spec and "VERSION:    v1alpha1" in spec
    fields = dict(re.findall(r"^  (\w+)\t<([^>]+)>", spec, re.M))
    assert {"command": "[]string", "gpusPerWorker": "integer", "workers": "Object", "codePackage": "Object",
            "nodeSelector": "map[string]string", "restartPolicy": "string"}.items() <= fields.items(), fields
    assert re.search(r"^  command\t<\[\]string> -required-$", spec, re.M)
    text = unwrap(spec)
    for name in ("gpus_per_worker", "restart_policy", "priority"):
        assert unwrap(tj.TrainJobSpec.model_fields[name].description or "") in text, name

    workers = ok(team_a.kubectl("explain", "trainjob.spec.workers"))
    assert re.search(r"^FIELD: workers <Object>$", workers, re.M)
    assert re.findall(r"^  (\w+)\t<integer>", workers, re.M) == ["max", "min"]
    text = unwrap(workers)
    assert unwrap(tj.WorkerRange.model_fields["min"].description or "") in text
    assert unwrap(tj.TrainJobSpec.model_fields["workers"].description or "") in text


@pytest.mark.parametrize(("change", "strict", "expected"), [
    ({"gpusPerWorker": "lots"}, False, r'spec\.gpusPerWorker: Invalid value: "string": spec\.gpusPerWorker in '
                                      r"body must be of type integer"),
    ({"gpusPerWorker": 17}, False, r"spec\.gpusPerWorker: Invalid value: 17: spec\.gpusPerWorker in body should "
                                   r"be less than or equal to 16"),
    ({"gpuPerWorker": 4}, True, r'strict decoding error: unknown field "spec\.gpuPerWorker"'),
    ({"workers": {"min": 3, "max": 1}}, False, r"spec\.workers: Invalid value: \"object\": workers\.min must not "
                                                r"exceed workers\.max"),
], ids=["wrong-type", "out-of-range", "unknown-field", "cel-rule"])
def test_the_api_server_rejects_a_wrong_field_by_name(team_a: Member, change: dict[str, Any], strict: bool,
                                                      expected: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    manifest = yaml.safe_load((EXAMPLES / "trainjob.yaml").read_text())
    manifest["metadata"] |= {"name": name, "namespace": team_a.team}
    manifest["spec"] |= change
    result = team_a.kubectl("apply", f"--validate={'strict' if strict else 'false'}", "-f", "-",
                            input=yaml.safe_dump(manifest))
    assert result.returncode != 0 and re.search(expected, result.stderr), result.stderr
    # The server's verdict (kubectl's own checks are off without strict): nothing was created.
    assert result.stderr.startswith('Error from server (BadRequest): error when creating "STDIN": TrainJob' if strict
                                    else f'The TrainJob "{name}" is invalid: '), result.stderr
    assert team_a.kubectl("get", "tj", name, "--ignore-not-found").stdout == ""
