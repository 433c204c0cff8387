"""`~/.hobot/gpucluster.yaml`: which cluster `traincli` talks to, and with what credential.

    current-cluster: mycluster1
    clusters:
      mycluster1:
        appid: team-a            # the namespace; "team-a/gpu-a100" also names a Kueue LocalQueue
        appkey: eyJhbGciOi...    # a bearer token; leave out to use kubeconfig (in-cluster or ~/.kube/config)
        server: https://k8s.example.com:6443
        certificate-authority: /etc/aidi/ca.crt    # or: insecure: true
        type: kubernetes         # or: local (the embedded single-machine runner, docs/local.md)

Written 0600 (it holds a credential). Reference: docs/traincli.md.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from aidi.api.errors import SpecError, from_pydantic
from aidi.errors import UsageError

CONFIG_ENV = "AIDI_GPUCLUSTER_CONFIG"
DEFAULT_CLUSTER_NAME = "mycluster1"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def default_path() -> Path:
    """``$AIDI_GPUCLUSTER_CONFIG``, else ``~/.hobot/gpucluster.yaml`` (AIDI's location)."""
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".hobot" / "gpucluster.yaml")


class Cluster(BaseModel):
    """One entry under ``clusters:``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    appid: str | None = Field(default=None, description="namespace, or namespace/localqueue")
    appkey: SecretStr | None = Field(default=None, description="bearer token; unset: use kubeconfig")
    server: str | None = Field(default=None, description="API server URL, e.g. https://k8s.example.com:6443")
    certificate_authority: str | None = Field(default=None, alias="certificate-authority")
    insecure: bool = False
    type: Literal["kubernetes", "local"] = "kubernetes"
    # `type: local` only (docs/local.md): where the embedded runner keeps jobs, and environment it adds.
    workdir: str | None = Field(default=None, description="local: the runner's work folder")
    env: dict[str, str] = Field(default_factory=dict, description="local: extra environment of every container")

    @field_validator("appid")
    @classmethod
    def _appid_shape(cls, value: str | None) -> str | None:
        if value is None:
            return value
        namespace, _, queue = value.partition("/")
        if not _NAMESPACE.match(namespace) or len(namespace) > 63 or (queue and "/" in queue):
            raise ValueError(f"{value!r} is not NAMESPACE or NAMESPACE/QUEUE (lower-case letters, digits, '-')")
        return value

    @property
    def runs_here(self) -> bool:
        """A `type: local` cluster: jobs run on this machine (docs/local.md), not on Kubernetes."""
        return self.type == "local"

    @property
    def namespace(self) -> str | None:
        return self.appid.partition("/")[0] if self.appid else None

    @property
    def queue(self) -> str | None:
        return self.appid.partition("/")[2] or None if self.appid else None

    def to_yaml_dict(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        if self.appkey is not None:
            data["appkey"] = self.appkey.get_secret_value()
        return data


class GpuClusterConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    current_cluster: str | None = Field(default=None, alias="current-cluster")
    clusters: dict[str, Cluster] = Field(default_factory=dict)


@dataclass
class ResolvedCluster:
    """The cluster a command uses: its name in the file and its settings."""

    name: str
    cluster: Cluster
    path: Path


def load(path: str | Path | None = None) -> GpuClusterConfig:
    """Read the file; a missing file is an empty config."""
    path = Path(path) if path else default_path()
    if not path.exists():
        return GpuClusterConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc}); fix it or run `traincli init` again") from None
    try:
        return GpuClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(path), from_pydantic(exc, GpuClusterConfig)) from None


def save(config: GpuClusterConfig, path: str | Path | None = None) -> Path:
    """Write the file atomically, readable by its owner only (it holds a credential)."""
    path = Path(path) if path else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if config.current_cluster:
        data["current-cluster"] = config.current_cluster
    data["clusters"] = {name: c.to_yaml_dict() for name, c in config.clusters.items()}
    fd, tmp = tempfile.mkstemp(prefix=".gpucluster-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(data, fh, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(path: str | Path | None = None, name: str | None = None) -> ResolvedCluster:
    """The cluster to use: ``name`` (--current-cluster), else the file's ``current-cluster``."""
    path = Path(path) if path else default_path()
    config = load(path)
    if not config.clusters:
        raise UsageError(f"no cluster configured in {path}; run `traincli init -t APPID:APPKEY --server URL` "
                         "(or `traincli init -t APPID` to use your kubeconfig)")
    chosen = name or config.current_cluster
    if chosen is None:
        if len(config.clusters) == 1:
            chosen = next(iter(config.clusters))
        else:
            raise UsageError(f"{path} has no current-cluster; pass --current-cluster NAME "
                             f"(one of: {', '.join(config.clusters)})")
    if chosen not in config.clusters:
        raise UsageError(f"cluster {chosen!r} is not in {path}; configured: {', '.join(config.clusters)}")
    return ResolvedCluster(name=chosen, cluster=config.clusters[chosen], path=path)


def parse_token(token: str) -> tuple[str, str | None]:
    """``APPID:APPKEY`` (as AIDI's personal-centre page hands them out) or just ``APPID`` (use kubeconfig)."""
    token = token.strip()
    appid, sep, appkey = token.partition(":")
    if not appid or (sep and not appkey):
        raise UsageError("the token is APPID:APPKEY (e.g. team-a:eyJhbGci...) or APPID alone to use your "
                         "kubeconfig; see docs/traincli.md")
    return appid, (appkey or None)


def token_expiry(appkey: str) -> datetime.datetime | None:
    """When a ServiceAccount token (an APP KEY, a JWT) expires, from its ``exp`` claim; None when it has none.

    For messages only, never for a decision on access: the claims are not verified here (the API server does)."""
    parts = appkey.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return datetime.datetime.fromtimestamp(int(exp), datetime.UTC) if exp is not None else None
    except (ValueError, TypeError, OverflowError):
        return None


def init(token: str, path: str | Path | None = None, name: str = DEFAULT_CLUSTER_NAME, server: str | None = None,
         certificate_authority: str | None = None, insecure: bool = False,
         type_: Literal["kubernetes", "local"] = "kubernetes") -> ResolvedCluster:
    """Add or replace cluster ``name`` from a token and make it the current cluster."""
    appid, appkey = parse_token(token) if token else (None, None)
    if appkey and not server and type_ == "kubernetes":
        raise UsageError("an APPKEY needs the API server: add --server https://HOST:6443")
    if certificate_authority and not Path(certificate_authority).is_file():
        raise UsageError(f"--certificate-authority {certificate_authority}: no such file")
    expires = token_expiry(appkey) if appkey else None
    if expires is not None and expires <= datetime.datetime.now(datetime.UTC):
        raise UsageError(f"this APP KEY expired at {expires:%Y-%m-%d %H:%M} UTC; make a new one in the console's "
                         "personal centre, or ask your platform admin (`aidi appkey issue`)")
    try:
        cluster = Cluster(appid=appid, appkey=appkey, server=server,
                          certificate_authority=str(Path(certificate_authority).resolve())
                          if certificate_authority else None,
                          insecure=insecure, type=type_)
    except ValidationError as exc:
        raise UsageError(f"token: {exc.errors()[0]['msg']}") from None
    path = Path(path) if path else default_path()
    config = load(path)
    config.clusters[name] = cluster
    config.current_cluster = name
    save(config, path)
    return ResolvedCluster(name=name, cluster=cluster, path=path)
