"""Who a session is: the team namespace, the user's own Kubernetes credential and dataspace credential.

A login token is checked against the API server by using it (listing the team's TrainJobs): the console
never decides on its own that a token is good, and never holds more rights than the token gives.
"""

from __future__ import annotations

import base64
import getpass
import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidi.cluster.client import JobClient, connect
from aidi.cluster.gpucluster import Cluster, ResolvedCluster, parse_token
from aidi.cluster.kube import KubeJobClient, api_errors
from aidi.console.settings import ConsoleSettings
from aidi.dataspace import DataspaceConfig
from aidi.errors import AidiError, AuthError, NotFoundError, UsageError

log = logging.getLogger(__name__)


@dataclass
class Identity:
    """A logged-in user. ``dataspace`` is the team's own account (its bucket): what it may list is what the
    pages show, decided by the storage, not by the console (docs/security.md)."""

    namespace: str
    queue: str | None
    user: str
    cluster: ResolvedCluster | None
    dataspace: DataspaceConfig | None = field(default=None, repr=False)
    dataspace_problem: str | None = None
    cluster_problem: str | None = None
    _client: JobClient | None = field(default=None, repr=False)

    def jobs(self) -> JobClient:
        """The user's JobClient (one per session; its connection pool is reused)."""
        if self._client is None:
            if self.cluster is None:
                raise UsageError(self.cluster_problem or "no Kubernetes cluster is configured")
            self._client = connect(self.cluster, self.namespace)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def token_subject(token: str) -> str | None:
    """The ``sub`` of a JWT (e.g. ``system:serviceaccount:team-a:traincli`` → ``team-a/traincli``), for display.

    Not verified here: the API server has already accepted the token, so a JWT's claims are genuine."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    if isinstance(sub, str) and sub.startswith("system:serviceaccount:"):
        return "/".join(sub.split(":")[2:4])
    return sub if isinstance(sub, str) else None


def login_cluster(settings: ConsoleSettings, token: str) -> Identity:
    """Cluster mode: ``APPID:APPKEY`` (the team's, or an APP KEY from the personal centre)."""
    try:
        appid, appkey = parse_token(token)
    except UsageError:
        appid, appkey = "", None
    if not appid or not appkey:
        raise AuthError("the login token is APPID:APPKEY, e.g. team-a:eyJhbGciOi... (your team's cluster token)")
    try:
        cluster = Cluster(appid=appid, appkey=appkey, server=settings.kube_server,
                          certificate_authority=settings.kube_ca, insecure=settings.kube_insecure)
    except ValueError:
        raise AuthError(f"{appid!r} is not a namespace (APPID is NAMESPACE or NAMESPACE/QUEUE)") from None
    resolved = ResolvedCluster(name="console", cluster=cluster, path=Path("console login"))
    kube = KubeJobClient.for_cluster(resolved)  # the console's own cluster: Kubernetes, never the local runner
    identity = Identity(namespace=cluster.namespace or "", queue=cluster.queue,
                        user=token_subject(appkey) or cluster.namespace or appid, cluster=resolved, _client=kube)
    try:
        identity.jobs().list_jobs()
    except AuthError:
        identity.close()
        raise AuthError(f"the cluster refused this token for namespace {identity.namespace}") from None
    except AidiError:
        identity.close()
        raise
    identity.dataspace, identity.dataspace_problem = team_dataspace(settings, identity.namespace)
    return identity


def team_dataspace(settings: ConsoleSettings, namespace: str) -> tuple[DataspaceConfig | None, str | None]:
    """The team's dataspace account: the Secret its job pods read, read with the console's own token (a
    member's key may read no Secret; the console's Role may read this one, by name, in team namespaces
    only). Called only after the user's token proved the namespace."""
    if settings.dataspace is None:
        return None, "the console has no dataspace configured (--dataspace-endpoint)"
    token = settings.issuer_token()
    if not token:
        return None, (f"the console has no ServiceAccount token at {settings.issuer_token_file} to read the team's "
                      "dataspace Secret (the chart mounts it)")
    name = settings.dataspace_secret
    console = Cluster(appkey=token, server=settings.kube_server, certificate_authority=settings.kube_ca,
                      insecure=settings.kube_insecure)
    client = KubeJobClient.for_cluster(ResolvedCluster("console", console, Path("console ServiceAccount")), namespace)
    try:
        with api_errors(f"read Secret {namespace}/{name}"):
            secret: Any = client.core.read_namespaced_secret(name, namespace)
    except NotFoundError:
        return None, (f"namespace {namespace} has no Secret {name}; ask your platform admin to onboard the "
                      "team (docs/install.md)")
    except AidiError as exc:
        return None, str(exc)
    finally:
        client.close()
    data = secret.data or {}
    try:
        access_key, secret_key = (base64.b64decode(data[k]).decode("utf-8") for k in ("accessKey", "secretKey"))
        bucket = base64.b64decode(data["bucket"]).decode("utf-8") if data.get("bucket") else None
    except (KeyError, ValueError):
        return None, f"Secret {namespace}/{name} lacks the keys accessKey and secretKey"
    base = settings.dataspace
    return DataspaceConfig(endpoint=base.endpoint, bucket=bucket or base.bucket, access_key=access_key,
                           secret_key=secret_key, region=base.region, source=f"Secret {namespace}/{name}"), None


def login_local(settings: ConsoleSettings, token: str) -> Identity:
    """Local mode: the token printed by `aidi console`; then the user's own configured credentials."""
    expected = settings.login_token or ""
    if not expected or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthError("wrong login token; use the one `aidi console` printed")
    resolved = settings.local_cluster
    client, problem = None, settings.local_cluster_problem
    if resolved is not None:
        try:
            client = connect(resolved)   # the namespace may come from the kubeconfig
        except AidiError as exc:
            resolved, problem = None, str(exc)
    if resolved is None and not problem:
        problem = "no cluster configured: run `traincli init` (or set up ~/.kube/config) and restart `aidi console`"
    return Identity(namespace=client.namespace if client else "-",
                    queue=resolved.cluster.queue if resolved else None, user=getpass.getuser(), cluster=resolved,
                    dataspace=settings.dataspace, cluster_problem=problem, _client=client)


def login(settings: ConsoleSettings, token: str) -> Identity:
    return login_local(settings, token) if settings.mode == "local" else login_cluster(settings, token)
