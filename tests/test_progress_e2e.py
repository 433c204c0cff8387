"""Training progress on a real API server (docs/progress.md): the chart installed for real, the operator as its
own process with the chart's ServiceAccount token, and a team member's `traincli` and `kubectl`.

The test plays the kubelet of one GPU node, log endpoint included: the node's status names this test's HTTPS
server (`daemonEndpoints.kubeletEndpoint`, address 127.0.0.1), so `GET .../pods/P/log` reaches it through the
API server exactly as it would reach a kubelet — with the API server's own authorization of the reader first.
The "trainer" is the log it serves: the progress records of a run that moves on while the test watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from aidi_operator.kube import ApiRefused, KubeApi
from aiohttp import web

from aidi.jobs import podspec
from tests.support import e2e
from tests.support.operator import ScheduledCluster, eventually
from tests.test_console_e2e import ConsoleProcess, login, team_token
from tests.test_console_e2e import console as console  # a fixture: the console as the chart runs it
from tests.test_progress import a_run, as_log

pytestmark = pytest.mark.e2e


class LogServingKubelet(e2e.Kubelet):
    """One GPU node whose kubelet endpoint is the test's log server (reachable at 127.0.0.1 only)."""

    def __init__(self, run: str, port: int) -> None:
        super().__init__(run, count=1)
        self.port = port

    def _heartbeat(self, name: str) -> None:
        super()._heartbeat(name)
        # Only an InternalIP: the API server dials the first address of its preferred types, and a Hostname
        # (which the base class sets) would have to resolve.
        # A JSON patch (a list) replaces the addresses; a strategic merge would keep the Hostname entry.
        self._core.patch_node_status(name, [
            {"op": "replace", "path": "/status/addresses", "value": [{"type": "InternalIP", "address": "127.0.0.1"}]},
            {"op": "add", "path": "/status/daemonEndpoints", "value": {"kubeletEndpoint": {"Port": self.port}}}])


def self_signed(folder: Path) -> ssl.SSLContext:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kubelet",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "kubelet.key"),
                    "-out", str(folder / "kubelet.crt")], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "kubelet.crt", folder / "kubelet.key")
    return context


async def test_status_progress_kubectl_columns_traincli_and_console(platform: e2e.Platform, e2e_run: str,
                                                                    console: ConsoleProcess, tmp_path: Path) -> None:
    log = {"text": as_log(a_run()[:4])}   # step 0, iteration 20 of 40
    asked: list[dict[str, str]] = []

    async def container_logs(request: web.Request) -> web.Response:
        assert request.match_info["container"] == podspec.MAIN_CONTAINER
        asked.append(dict(request.query))
        lines = log["text"].splitlines(keepends=True)
        tail = int(request.query.get("tailLines") or len(lines))
        return web.Response(text="".join(lines[-tail:]))

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed(tmp_path))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    team = platform.teams[0]
    team_config = e2e.token_kubeconfig(tmp_path / "team.kubeconfig", platform.team_token(team), team)
    api = KubeApi(e2e.connection)
    job = f"watched-{uuid.uuid4().hex[:6]}"
    operator_config = e2e.token_kubeconfig(tmp_path / "operator.kubeconfig", platform.operator_token(),
                                           platform.namespace)
    try:
        # The operator reads progress every 0.5 s instead of the default 120 s.
        operator = e2e.OperatorProcess(operator_config, log_dir=tmp_path, extra_args=("--progress-seconds", "0.5"))
        with LogServingKubelet(f"{e2e_run}-logs", port) as kubelet, operator as op:
            cluster = ScheduledCluster(api, team, kubelet.selector)
            await cluster.create_job(job, gpusPerWorker=2, nodeSelector=kubelet.selector)
            await cluster.wait_pods(job, [f"{job}-worker-0"], timeout=20)
            await cluster.run_pod(f"{job}-worker-0")

            async def progress(step: str, iteration: str) -> dict[str, str] | None:
                got = (await cluster.status(job)).get("progress") or {}
                return got if (got.get("step"), got.get("iteration")) == (step, iteration) else None

            await eventually(lambda: progress("1/4 with-bn", "20/40"), timeout=30,
                             what="status.progress from the log the API server fetched from the kubelet")
            log["text"] = as_log(a_run())
            got = await eventually(lambda: progress("2/4 fusion-bn-c1", "20/40"), timeout=30)
            assert got["eta"] == "1:02:05" and got["stepEta"] == "0:02:05"
            assert asked and all(q.get("tailLines") == "40" for q in asked)

            # The team member: kubectl's columns, and traincli status reading the log with the team's token.
            table = e2e.kubectl("get", "trainjobs", job, "-n", team, "-o", "wide", kubeconfig=str(team_config)).stdout
            header, row = table.splitlines()[:2]
            assert {"STEP", "EPOCH", "LOSS", "ETA"} <= set(header.split()), header
            assert "2/4" in row and "fusion-bn-c1" in row and "1:02:05" in row, table
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDI_", "KUBERNETES_"))}
            env |= {"KUBECONFIG": str(team_config), "HOME": str(tmp_path)}
            init = await asyncio.to_thread(subprocess.run, [str(e2e.BIN / "traincli"), "init", "-t", team],
                                           capture_output=True, text=True, env=env, timeout=60)
            assert init.returncode == 0, init.stderr   # the team's namespace, credentials from its kubeconfig
            status = await asyncio.to_thread(subprocess.run, [str(e2e.BIN / "traincli"), "status", job],
                                             capture_output=True, text=True, env=env, timeout=60)
            assert status.returncode == 0, status.stderr
            assert "progress:   step 2/4 fusion-bn-c1, epoch 2/4, iteration 20/40, 123.4 samples/s" in status.stdout
            assert "ETA:        step 0:02:05, job 1:02:05" in status.stdout

            # The console, logged in with the team's token: the job page's progress and curves. Its requests go
            # through threads: this loop serves the kubelet's log endpoint they reach.
            session = await asyncio.to_thread(login, console, team_token(platform, team))
            with session:
                got_detail = await asyncio.to_thread(session.get, f"{console.url}/api/v1/jobs/{job}")
                detail = got_detail.json()
                assert detail["progress"].get("step_label") == "2/4 fusion-bn-c1", (detail["progress"],
                                                                                    detail.get("log_note"))
                assert set(detail["curves"]["loss"]) == {"det_person", "seg_lane"}
                assert detail["curves"]["val"]["seg_lane"]["miou"] == [[40, 0.5]]
                page = (await asyncio.to_thread(session.get, f"{console.url}/jobs/{job}")).text
                assert 'id="chart-loss"' in page and page.count("<polyline") >= 3 and "1:02:05" in page

            await cluster.finish_pod(f"{job}-worker-0")
            final = await cluster.wait_phase(job, "Succeeded", timeout=20)
            assert final["progress"]["step"] == "4/4 done" and final["progress"]["eta"] == "0:00:00"
            assert not op.forbidden(), "the chart's RBAC refused the operator:\n" + "\n".join(op.forbidden())
    finally:
        with contextlib.suppress(ApiRefused):  # the team's namespace outlives the test; the job must not
            await api.delete(f"/apis/aidi.io/v1alpha1/namespaces/{team}/trainjobs/{job}")
        await api.close()
        await runner.cleanup()
