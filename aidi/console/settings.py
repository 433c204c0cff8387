"""What the console needs to know: how it authenticates users, where the API server and the dataspace are,
and how APP KEYs are issued. Two modes:

- ``cluster`` (the Helm chart): users log in with an APP KEY ``APPID:APPKEY`` (the same string
  ``traincli init -t`` takes); every read goes to ``kube_server`` with that token. Datasets are read with
  the team's own dataspace account, the Secret ``aidi-dataspace`` in the team's namespace, which the
  console reads with its own ServiceAccount token (``issuer_token_file``; a member's key may read no
  Secret), as it issues APP KEYs.
- ``local`` (``aidi console``): one user on one machine. The login token is printed at start; the
  credentials are the user's own: ``gpucluster.yaml`` (or the kubeconfig) and ``hitc``'s config (or the
  embedded local-folder dataspace).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aidi.cluster.gpucluster import ResolvedCluster
from aidi.dataspace import DataspaceConfig
from aidi.errors import UsageError

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
DEFAULT_PORT = 8686
YEAR = 365 * 86400


@dataclass(frozen=True)
class ConsoleSettings:
    mode: Literal["cluster", "local"]
    # -- Kubernetes as the console reaches it
    kube_server: str | None = None          # cluster mode: the API server URL (in-cluster: https://kubernetes.default.svc)
    kube_ca: str | None = None              # CA bundle of that server
    kube_insecure: bool = False
    local_cluster: ResolvedCluster | None = None   # local mode: the gpucluster.yaml entry (None: no cluster)
    local_cluster_problem: str | None = None       # local mode: why there is no cluster, shown on the job pages
    # -- what users paste into gpucluster.yaml (the API server as workstations reach it)
    public_server: str | None = None
    public_ca_file: str | None = None
    # -- the dataspace
    dataspace: DataspaceConfig | None = None       # cluster: endpoint + bucket (keys come per team); local: all
    dataspace_public_endpoint: str | None = None   # what `hitc init --endpoint` should say, when it differs
    dataspace_secret: str = "aidi-dataspace"
    # -- APP KEYs
    appkeys_enabled: bool = True
    issuer_token_file: str | None = None    # cluster mode: the console ServiceAccount's token (re-read each time)
    team_role: str = "aidi-team"
    appkey_ttl_seconds: int = YEAR
    # -- the web side
    login_token: str | None = field(default=None, repr=False)   # local mode only
    refresh_seconds: float = 5.0
    session_idle_seconds: int = 8 * 3600
    sessions_per_user: int = 10             # more logins of one user end that user's oldest sessions
    secure_cookies: bool = False
    log_tail_lines: int = 100

    def __post_init__(self) -> None:
        if self.mode == "cluster" and not self.kube_server:
            raise UsageError("the console in cluster mode needs the API server: --kube-server URL "
                             "(in a pod it is taken from KUBERNETES_SERVICE_HOST)")
        if self.mode == "local" and not self.login_token:
            raise UsageError("the console in local mode needs a login token")
        if self.refresh_seconds <= 0 or self.appkey_ttl_seconds < 600:
            raise UsageError("--refresh must be positive and --appkey-ttl at least 600 seconds")

    @classmethod
    def local(cls, cluster: ResolvedCluster | None = None, dataspace: DataspaceConfig | None = None,
              problem: str | None = None, **changes: Any) -> ConsoleSettings:
        """One user on this machine: a fresh login token, the user's own cluster entry and dataspace."""
        public = cluster.cluster.server if cluster else None
        ca = cluster.cluster.certificate_authority if cluster else None
        return cls(mode="local", local_cluster=cluster, local_cluster_problem=problem,
                   dataspace=dataspace or DataspaceConfig.load(), public_server=public, public_ca_file=ca,
                   login_token=secrets.token_urlsafe(24), **changes)

    @classmethod
    def in_cluster_server(cls) -> str | None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            return None
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    def issuer_token(self) -> str | None:
        """The console ServiceAccount's current token (kubelets rotate the file, so it is read each time)."""
        if not self.issuer_token_file:
            return None
        try:
            return Path(self.issuer_token_file).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
