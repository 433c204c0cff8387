"""The e2e suite's side of a real cluster: which cluster, admin access, GPU nodes and the kubelet the
tests play, the chart installed for real, and the operator run as its own process with the chart's
own ServiceAccount.

Which cluster: ``AIDI_E2E_KUBECONFIG`` (set by ``make test``, which starts ../shared/k8s/control-plane,
and by ``make e2e``, which names your kubeconfig), else ``KUBECONFIG`` / ``~/.kube/config`` (a plain
``pytest -m e2e``). ``AIDI_E2E_SKIP`` says why there is none (``tools/with-control-plane.sh``).

Everything cluster-scoped the suite creates (nodes, the chart's CRD, PriorityClasses, ClusterRoles and
namespaces) is labelled with the run and removed at the end of the session; ``ClusterSnapshot`` checks
that the cluster is left as it was found.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import yaml

from aidi.jobs.lifecycle import timestamp
from tests.support.seaweedfs import TeamAccount, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHART = REPO / "charts" / "aidi"
E2E_LABEL = "aidi.io/e2e-run"  # on every cluster-scoped object the suite creates itself
POOL_LABEL = "aidi.io/e2e-pool"  # the nodes of this run: jobs select them, so no real node competes
GPUS_PER_NODE = 8
RBAC_REFUSAL = re.compile(r'User "[^"]+" cannot [a-z]+ resource')


# ------------------------------------------------------------------------------------------ the cluster


def kubeconfig_path() -> str:
    return (os.environ.get("AIDI_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG")
            or str(Path.home() / ".kube" / "config"))


def cluster_reason() -> str | None:
    """None when there is a cluster for the e2e tests; otherwise why not (the skip reason)."""
    if os.environ.get("AIDI_E2E_SKIP"):
        return os.environ["AIDI_E2E_SKIP"]
    path = kubeconfig_path()
    if not any(os.path.exists(p) for p in path.split(os.pathsep)):
        return (f"no kubeconfig at {path}: e2e tests need a cluster (`make test` starts ../shared/k8s/control-plane "
                "when it exists; `make e2e` uses your kubeconfig's cluster: kind, k3d, ...)")
    try:
        from kubernetes import client

        client.VersionApi(api_client(path)).get_code(_request_timeout=5)
    except Exception as exc:  # any failure means "no usable cluster" for a skip
        return f"the e2e kubeconfig's cluster ({path}) does not answer: {type(exc).__name__}: {exc}"[:300]
    return None


def api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes`` client for one kubeconfig file (not the process-wide default)."""
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig or kubeconfig_path())


def connection(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """kopf's connection info (for ``KubeApi``) from one kubeconfig file, as kopf's own client login reads it."""
    cfg = api_client(kubeconfig).configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                               scheme=scheme or None, token=token or None, certificate_path=cfg.cert_file,
                               private_key_path=cfg.key_file)


def kubectl_exe() -> str:
    """The control plane's own kubectl (same version as the server), else the one `make tools` installs."""
    for candidate in (os.environ.get("AIDI_E2E_KUBECTL"), str(BIN / "kubectl"), shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("kubectl is not installed: run `make tools` (tools/install-helm.sh)")


def kubectl(*args: str, kubeconfig: str | None = None, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([kubectl_exe(), "--kubeconfig", kubeconfig or kubeconfig_path(), *args],
                            input=input, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def token_kubeconfig(path: Path, token: str, namespace: str, admin_kubeconfig: str | None = None) -> Path:
    """A kubeconfig with the admin kubeconfig's server and CA, and this bearer token (a real identity)."""
    cfg = api_client(admin_kubeconfig).configuration
    cluster: dict[str, Any] = {"server": cfg.host}
    if cfg.ssl_ca_cert:
        cluster["certificate-authority-data"] = base64.b64encode(Path(cfg.ssl_ca_cert).read_bytes()).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "e2e", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


def run_aidi(*args: str) -> str:
    """The real `aidi` console script with the e2e cluster's admin kubeconfig (a platform engineer's)."""
    result = subprocess.run([str(BIN / "aidi"), *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KUBECONFIG": kubeconfig_path()})
    assert result.returncode == 0, f"aidi {' '.join(args)}: {result.stderr}"
    return result.stdout


def create_token(service_account: str, namespace: str, seconds: int = 3600) -> str:
    """A bound token of a ServiceAccount through the TokenRequest API (`kubectl create token`)."""
    return kubectl("create", "token", service_account, "-n", namespace, f"--duration={seconds}s").stdout.strip()


def wait_for(probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# ------------------------------------------------------------------------------- cluster-scoped objects


# Cluster-scoped kinds the suite may create, itself or through the chart.
CLUSTER_SCOPED = "namespaces,nodes,customresourcedefinitions,priorityclasses,clusterroles,clusterrolebindings"


def _cluster_scoped_names() -> set[str]:
    return set(kubectl("get", CLUSTER_SCOPED, "-o", "name").stdout.split())


@dataclass
class ClusterSnapshot:
    """Every cluster-scoped object of the kinds above (``kind/name``): compared at the end of the run."""

    names: set[str]

    @classmethod
    def take(cls) -> ClusterSnapshot:
        return cls(_cluster_scoped_names())

    def leftovers(self, timeout: float = 90.0) -> set[str]:
        """What exists now and did not before (waiting for namespaces still being deleted)."""
        deadline = time.monotonic() + timeout
        while (left := _cluster_scoped_names() - self.names) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


# ------------------------------------------------------------------------------- nodes and the kubelet


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kubelet:
    """Nodes with GPUs, and the parts of a kubelet the tests need but do not drive themselves.

    It registers ``count`` Nodes with ``nvidia.com/gpu`` capacity (labelled with the run, so jobs can
    select them and nothing else lands on them), keeps them Ready (Lease renewals and status heartbeats,
    or the node lifecycle controller taints them after 40 s), and confirms pod deletions as a kubelet
    does once the containers are stopped (a pod bound to a node is only marked for deletion until its
    kubelet deletes it with grace period 0). Pod *status* — running, exit codes — is the tests' part.
    """

    def __init__(self, run: str, count: int = 2, gpus: int = GPUS_PER_NODE) -> None:
        self.run = run
        self.nodes = [f"aidi-e2e-{run}-gpu-{i}" for i in range(count)]
        self.gpus = gpus
        self.selector = {POOL_LABEL: run}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def __enter__(self) -> Kubelet:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client())
        self._leases = client.CoordinationV1Api(self._core.api_client)
        for name in self.nodes:
            self._core.create_node({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {E2E_LABEL: self.run, POOL_LABEL: self.run,
                                                      "kubernetes.io/hostname": name}}})
            self._leases.create_namespaced_lease("kube-node-lease", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "labels": {E2E_LABEL: self.run}},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()}})
            self._heartbeat(name)
        self._thread = threading.Thread(target=self._loop, name="e2e-kubelet", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self, name: str) -> None:
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(self.gpus)}
        now = timestamp(dt.datetime.now(dt.UTC))
        self._core.patch_node_status(name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status (played by the e2e tests)",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.28.0", "containerRuntimeVersion": "e2e://1", "architecture": "amd64",
                         "operatingSystem": "linux", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""}}})

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(0.2):
            try:
                if time.monotonic() - last_beat > 10:
                    last_beat = time.monotonic()
                    for name in self.nodes:
                        self._leases.patch_namespaced_lease(name, "kube-node-lease",
                                                            {"spec": {"renewTime": _micro_now()}})
                        self._heartbeat(name)
                self.confirm_deletions()
            except Exception as exc:  # a test's assertion will show what it caused; keep playing
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def confirm_deletions(self) -> None:
        """Delete, with grace period 0, every pod on our nodes that is marked for deletion."""
        from kubernetes.client.rest import ApiException

        for node in self.nodes:
            pods = self._core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
            for pod in pods:
                if pod.metadata.deletion_timestamp is None:
                    continue
                with contextlib.suppress(ApiException):  # already gone
                    self._core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                     grace_period_seconds=0)

    def __exit__(self, *exc: object) -> None:
        # Namespaces of the run still being deleted may hold pods on our nodes: they go only once we
        # confirm, so keep playing the kubelet until they are gone.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self._core.list_namespace(label_selector=f"{E2E_LABEL}={self.run}").items,
                     timeout=120, what="the run's namespaces to be deleted")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        from kubernetes.client.rest import ApiException

        for name in self.nodes:
            with contextlib.suppress(ApiException):
                self._core.delete_node(name)
            with contextlib.suppress(ApiException):
                self._leases.delete_namespaced_lease(name, "kube-node-lease")


# ------------------------------------------------------------------------------- the chart, installed


def helm_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": kubeconfig_path()}


def helm_exe() -> str:
    for candidate in (str(BIN / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("helm is not installed: run `make tools` (tools/install-helm.sh)")


@dataclass
class Platform:
    """`helm install` of charts/aidi, for real, with two teams: what a platform engineer does first."""

    run: str
    home: Path
    s3_endpoint: str
    s3_credentials: tuple[str, str]
    release: str = "aidi-e2e"
    teams: tuple[str, str] = ("", "")
    namespace: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    # Each team's own dataspace account on the S3 server (tests/support/seaweedfs.py), in `teams` order.
    team_accounts: tuple[TeamAccount, ...] = ()
    _keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.namespace = self.namespace or f"aidi-e2e-{self.run}"
        self.teams = (f"aidi-e2e-{self.run}-team-a", f"aidi-e2e-{self.run}-team-b")
        teams: list[dict[str, Any]] = [{"namespace": t, "gpuQuota": 16} for t in self.teams]
        for team, account in zip(teams, self.team_accounts, strict=False):
            team["dataspace"] = {"bucket": account.bucket, "accessKey": account.access_key,
                                 "secretKey": account.secret_key}
        self.values = {
            "commonLabels": {E2E_LABEL: self.run},
            "teams": teams,
            # The tests' S3 server as an external dataspace (the in-chart MinIO's bucket-init hook Job
            # would need a kubelet to finish before `helm install` returns).
            "dataspace": {"mode": "external", "external": {"endpoint": self.s3_endpoint},
                          "credentials": {"accessKey": self.s3_credentials[0],
                                          "secretKey": self.s3_credentials[1]}},
            "console": {"enabled": True},
            # Cluster-wide on purpose: the operator scenarios (test_operator_e2e.py) run in throwaway namespaces.
            # Listed teams alone scope it to their namespaces (tests/test_chart.py; the server-side dry run of
            # ci/teams-values.yaml; the watchNamespaces release of test_platform_e2e.py runs that way).
            "operator": {"resyncSeconds": 1, "clusterWide": True},
        }

    @property
    def operator_service_account(self) -> str:
        return f"{self.release}-operator"

    @property
    def console_service_account(self) -> str:
        return f"{self.release}-console"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([helm_exe(), *args], capture_output=True, text=True, env=helm_env(self.home),
                                timeout=180)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args[:2])}: {result.stderr}"
        return result

    def install(self) -> None:
        values = self.home / "values.yaml"
        values.write_text(yaml.safe_dump(self.values))
        self.helm("install", self.release, str(CHART), "-n", self.namespace, "--create-namespace", "-f", str(values))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainjobs.aidi.io")
        # Namespaces the chart creates keep the label of the run (commonLabels); the release's own does not.
        kubectl("label", "namespace", self.namespace, f"{E2E_LABEL}={self.run}")

    def uninstall(self) -> None:
        """Everything the install made, including what `helm uninstall` keeps on purpose (CRD, team namespaces)."""
        self.helm("uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "120s", check=False)
        kubectl("delete", "crd", "trainjobs.aidi.io", "--ignore-not-found", "--wait=true", check=False)
        kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", self.namespace, *self.teams, check=False)

    def operator_token(self, seconds: int = 3600) -> str:
        return create_token(self.operator_service_account, self.namespace, seconds)

    def team_key(self, team: str) -> dict[str, Any]:
        """The team's first APP KEY, issued as docs/install.md tells a platform engineer (`aidi appkey issue`), once
        per run: {id, appid, token, expires, ...}. Its ServiceAccount is ``appkey-<id>`` in the team namespace."""
        if team not in self._keys:
            self._keys[team] = json.loads(run_aidi("appkey", "issue", "-n", team, "--description", "e2e",
                                                   "--ttl", "7200", "--json"))
        return self._keys[team]

    def team_token(self, team: str) -> str:
        """The bearer token (APPKEY) of the team's first APP KEY."""
        return str(self.team_key(team)["token"]).split(":", 1)[1]

    def team_account(self, team: str) -> str:
        """The ServiceAccount behind the team's first APP KEY (for `kubectl auth can-i --as=...`)."""
        return f"appkey-{self.team_key(team)['id']}"


def new_run_id() -> str:
    # Starts with a letter: a hex id such as 85e098 reads as a number in YAML (helm then refuses the label).
    return "r" + uuid.uuid4().hex[:5]


# ------------------------------------------------------------------------------- the operator, as deployed


class OperatorProcess:
    """``aidi-operator`` as its own process, with a kubeconfig holding only the given token.

    Started and stopped as a Deployment would (SIGTERM). Its log is kept; ``forbidden()`` lists the
    requests the API server refused for lack of rights (a chart RBAC gap shows there first).
    """

    def __init__(self, kubeconfig: Path, namespaces: tuple[str, ...] = (), resync_seconds: float = 0.5,
                 log_dir: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.resync_seconds = resync_seconds
        self.extra_args = extra_args  # more aidi-operator flags, e.g. ("--progress-seconds", "0.5")
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="aidi-operator-log-"))
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        port = free_port()
        log = self._next_log()
        args = [str(BIN / "aidi-operator"), "--liveness-port", str(port), "--resync-seconds", str(self.resync_seconds),
                "--log-tail-lines", "20", *self.extra_args]
        for ns in self.namespaces:
            args += ["-n", ns]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AIDI_"))}
        env |= {"KUBECONFIG": str(self.kubeconfig), "HOME": str(self.log_dir)}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy(port, "aidi-operator", timeout=60)
        return self

    def _next_log(self) -> Path:
        """Each start logs to a file of its own, kept for ``log()`` and ``forbidden()``."""
        log = self.log_dir / f"operator-{len(self.logs)}.log"
        self.logs.append(log)
        return log

    def _wait_healthy(self, port: int, what: str, timeout: float) -> None:
        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"{what} exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=timeout, what=f"{what}'s /healthz")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def forbidden(self) -> list[str]:
        """Requests RBAC refused: the API server's words for it (not other 403s, e.g. a namespace being deleted)."""
        return [line for line in self.log().splitlines() if RBAC_REFUSAL.search(line)]

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def operator_with_token(platform: Platform, tmp: Path, namespaces: tuple[str, ...] = (),
                        resync_seconds: float = 0.5, extra_args: tuple[str, ...] = ()) -> Iterator[OperatorProcess]:
    """The operator outside the cluster with the chart's own operator ServiceAccount's token."""
    config = token_kubeconfig(tmp / "operator.kubeconfig", platform.operator_token(), platform.namespace)
    with OperatorProcess(config, namespaces, resync_seconds, log_dir=tmp, extra_args=extra_args) as operator:
        yield operator
