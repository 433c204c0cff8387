"""Where the dataspace is and who we are to it: ``~/.olympus/config.yaml`` or the pods' environment.

The config file, written by ``hitc init`` with mode 0600::

    dataspace:
      endpoint: http://minio.example.com:9000   # or https://..., or file:///srv/aidi-dataspace
      bucket: aidi
      token: ACCESS_KEY:SECRET_KEY               # the S3 access key and secret key in one string
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from aidi.errors import UsageError

DEFAULT_CONFIG_PATH = Path("~/.olympus/config.yaml")
DEFAULT_BUCKET = "aidi"
# The embedded default for one machine when nothing is configured: a folder, no server.
DEFAULT_LOCAL_ROOT = Path("~/.olympus/dataspace")

ENV_ENDPOINT = "AIDI_DATASPACE_ENDPOINT"
ENV_BUCKET = "AIDI_DATASPACE_BUCKET"
# The team's own bucket, from its Secret aidi-dataspace (key `bucket`): wins over AIDI_DATASPACE_BUCKET, which
# the operator sets to the platform's shared bucket for every namespace.
ENV_TEAM_BUCKET = "AIDI_DATASPACE_TEAM_BUCKET"
# The chart names a team's dataspace account after its namespace (charts/aidi/templates/_helpers.tpl).
TEAM_ACCOUNT_PREFIX = "aidi-"
ENV_ACCESS_KEY = "AIDI_DATASPACE_ACCESS_KEY"
ENV_SECRET_KEY = "AIDI_DATASPACE_SECRET_KEY"

_ENDPOINT_RE = re.compile(r"^(https?://[^/\s]+/?|file://.+)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``path`` if given, else ``~/.olympus/config.yaml``."""
    return Path(path or DEFAULT_CONFIG_PATH).expanduser()


def parse_token(token: str) -> tuple[str, str]:
    """Split a dataspace token ``ACCESS_KEY:SECRET_KEY``; the message never repeats the secret."""
    access_key, sep, secret_key = token.strip().partition(":")
    if not sep or not access_key or not secret_key:
        raise UsageError("the dataspace token must be ACCESS_KEY:SECRET_KEY (the S3 access key and secret key "
                         "joined by a colon); ask your platform admin for one")
    return access_key, secret_key


@dataclass(frozen=True)
class DataspaceConfig:
    """How to reach the dataspace.

    ``endpoint`` is ``http(s)://host[:port]`` for an S3 server (MinIO, SeaweedFS, AWS) or
    ``file:///path`` for a local folder (then ``bucket`` and the keys are unused). The secret key is
    kept out of ``repr`` so the config can be logged.
    """

    endpoint: str
    bucket: str = DEFAULT_BUCKET
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    region: str | None = None
    source: str = "arguments"  # where this came from, for error messages ("~/.olympus/config.yaml", "environment")

    def __post_init__(self) -> None:
        if not _ENDPOINT_RE.match(self.endpoint):
            raise UsageError(f"dataspace endpoint {self.endpoint!r} (from {self.source}) must be http(s)://HOST[:PORT] "
                             "for an S3 server or file:///PATH for a local folder")
        if not self.is_local and not _BUCKET_RE.match(self.bucket):
            raise UsageError(f"dataspace bucket {self.bucket!r} (from {self.source}) is not a valid S3 bucket name: "
                             "3-63 characters, lower-case letters, digits, '.' and '-'")

    @property
    def is_local(self) -> bool:
        return self.endpoint.startswith("file://")

    @property
    def local_root(self) -> Path:
        """The folder of a ``file://`` endpoint."""
        return Path(self.endpoint[len("file://"):]).expanduser()

    @property
    def token(self) -> str:
        return f"{self.access_key}:{self.secret_key}"

    def with_token(self, token: str) -> DataspaceConfig:
        access_key, secret_key = parse_token(token)
        return replace(self, access_key=access_key, secret_key=secret_key)

    @classmethod
    def local(cls, root: str | os.PathLike[str] | None = None) -> DataspaceConfig:
        """A local-folder dataspace (the embedded default is ``~/.olympus/dataspace``)."""
        path = Path(root or DEFAULT_LOCAL_ROOT).expanduser().resolve()
        return cls(endpoint=f"file://{path}", source="the embedded default" if root is None else "arguments")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DataspaceConfig:
        """Read ``AIDI_DATASPACE_ENDPOINT``, ``_BUCKET``, ``_ACCESS_KEY``, ``_SECRET_KEY`` (what a job's pods get)."""
        env = os.environ if environ is None else environ
        endpoint = env.get(ENV_ENDPOINT, "").strip()
        if not endpoint:
            raise UsageError(f"{ENV_ENDPOINT} is not set; set it to http(s)://HOST[:PORT] or file:///PATH")
        bucket = env.get(ENV_TEAM_BUCKET, "").strip() or env.get(ENV_BUCKET, "").strip() or DEFAULT_BUCKET
        return cls(endpoint=endpoint, bucket=bucket,
                   access_key=env.get(ENV_ACCESS_KEY, "").strip(), secret_key=env.get(ENV_SECRET_KEY, "").strip(),
                   source="the environment")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> DataspaceConfig:
        """The config a workstation command uses.

        An explicit ``path`` must exist. Without one: ``AIDI_DATASPACE_ENDPOINT`` if set, else
        ``~/.olympus/config.yaml`` if it exists, else the embedded local folder ``~/.olympus/dataspace``.
        """
        if path is None and os.environ.get(ENV_ENDPOINT):
            return cls.from_env()
        file = config_path(path)
        if not file.exists():
            if path is not None:
                raise UsageError(f"config file {file} does not exist; create it with `hitc init -t TOKEN "
                                 f"--endpoint URL -C {file}`")
            return cls.local()
        return cls._from_file(file)

    @classmethod
    def _from_file(cls, file: Path) -> DataspaceConfig:
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{file} is not valid YAML ({exc}); fix it or re-run `hitc init`") from None
        section = data.get("dataspace") if isinstance(data, dict) else None
        if not isinstance(section, dict) or not section.get("endpoint"):
            raise UsageError(f"{file}: missing `dataspace.endpoint`; re-run `hitc init -t TOKEN --endpoint URL`")
        access_key, secret_key = ("", "")
        if section.get("token"):
            access_key, secret_key = parse_token(str(section["token"]))
        return cls(endpoint=str(section["endpoint"]), bucket=str(section.get("bucket") or DEFAULT_BUCKET),
                   access_key=access_key, secret_key=secret_key,
                   region=section.get("region"), source=str(file))

    def access_denied(self, where: str, action: str) -> str:
        """The one line for a dataspace that refused this credential ``action`` at ``where`` (s3://BUCKET/PREFIX):
        each team's account reaches its own bucket only (docs/security.md), so the usual cause is a token or a
        bucket of another team."""
        owner = self.access_key[len(TEAM_ACCOUNT_PREFIX):] if self.access_key.startswith(TEAM_ACCOUNT_PREFIX) \
            else None
        whose = f"is for team {owner}" if owner else f"(access key {self.access_key!r}) does not reach it"
        return (f"access denied to {where} (trying to {action}): your dataspace credential {whose}; it reaches only "
                "its team's own bucket, and reads the shared one. Use your team's bucket (`hitc init --bucket "
                "BUCKET`, shown in the console's personal centre) or ask your platform admin")

    def to_yaml(self) -> str:
        section: dict[str, Any] = {"endpoint": self.endpoint, "bucket": self.bucket}
        if self.access_key:
            section["token"] = self.token
        if self.region:
            section["region"] = self.region
        return "# written by `hitc init`; the token is a secret: keep this file 0600\n" + \
            yaml.safe_dump({"dataspace": section}, sort_keys=False)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the config file with mode 0600 (created that way, never world-readable in between)."""
        file = config_path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.to_yaml())
        os.chmod(file, 0o600)
        return file
