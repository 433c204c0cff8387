"""`aidi console`: the platform's web console — on this machine with your own credentials, or (`--mode
cluster`, as the Helm chart runs it) for every team, each user logging in with an APP KEY."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from aidi import cmdline
from aidi.cluster import gpucluster
from aidi.console.settings import DEFAULT_PORT, IN_CLUSTER_CA, IN_CLUSTER_TOKEN, YEAR, ConsoleSettings
from aidi.errors import UsageError

EPILOG = """\
examples:
  aidi console                         # http://127.0.0.1:8686, your gpucluster.yaml (or kubeconfig) and hitc config
  aidi console --port 9000 --current-cluster prod
  aidi console --mode cluster --dataspace-endpoint http://aidi-minio.aidi-system.svc:9000 \\
      --public-server https://k8s.example.com:6443     # in a pod (the Helm chart's console.enabled=true)

Pages: Data management / Training datasets and Models, Task management / Training jobs (running,
finished, failed; details, pods, events, log tail), Personal centre (dataspace token, APP KEYs).
Reference: docs/console.md.
"""


def _local_cluster(args: argparse.Namespace) -> tuple[gpucluster.ResolvedCluster | None, str | None]:
    """The user's cluster: gpucluster.yaml's current cluster, else the kubeconfig, else none (and why)."""
    try:
        resolved = gpucluster.resolve(args.config, args.current_cluster)
    except UsageError as exc:
        if args.config or args.current_cluster:
            raise
        kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        if any(Path(p).exists() for p in kubeconfig.split(os.pathsep)) or os.environ.get("KUBERNETES_SERVICE_HOST"):
            return gpucluster.ResolvedCluster("kubeconfig", gpucluster.Cluster(), Path(kubeconfig)), None
        return None, f"no cluster: {exc}"
    return resolved, None   # a `type: local` cluster is the embedded runner: its jobs show just the same


def settings_from_args(args: argparse.Namespace) -> ConsoleSettings:
    from aidi.dataspace import DataspaceConfig

    common_settings: dict[str, Any] = {
        "refresh_seconds": args.refresh, "appkeys_enabled": not args.no_appkeys, "team_role": args.team_role,
        "appkey_ttl_seconds": args.appkey_ttl, "secure_cookies": args.secure_cookies,
        "dataspace_public_endpoint": args.dataspace_public_endpoint,
    }
    if args.mode == "local":
        resolved, problem = _local_cluster(args)
        dataspace = DataspaceConfig.load(args.dataspace_config)
        settings = ConsoleSettings.local(resolved, dataspace, problem, **common_settings)
        if args.public_server:
            settings = dataclasses.replace(settings, public_server=args.public_server)
        return settings
    if not args.dataspace_endpoint:
        raise UsageError("--mode cluster needs --dataspace-endpoint URL (where the console reads datasets)")
    server = args.kube_server or ConsoleSettings.in_cluster_server()
    ca = args.kube_ca or (IN_CLUSTER_CA if Path(IN_CLUSTER_CA).exists() and not args.kube_server else None)
    return ConsoleSettings(
        mode="cluster", kube_server=server, kube_ca=ca, kube_insecure=args.kube_insecure,
        public_server=args.public_server, public_ca_file=args.public_ca,
        dataspace=DataspaceConfig(endpoint=args.dataspace_endpoint, bucket=args.dataspace_bucket,
                                  source="--dataspace-endpoint"),
        issuer_token_file=args.issuer_token_file, **common_settings)


def run_console(args: argparse.Namespace) -> int:
    from aidi.console.server import serve

    settings = settings_from_args(args)

    def started(url: str) -> None:
        print(f"AIDI console ({settings.mode} mode) on {url}", flush=True)
        if settings.mode == "local":
            # The fragment (#...) never reaches the server, so the token stays out of its logs.
            print(f"open {url}/login#token={settings.login_token}\n(or log in with the token "
                  f"{settings.login_token}); Ctrl-C stops it", flush=True)
            if settings.local_cluster_problem:
                print(f"jobs: {settings.local_cluster_problem}", file=sys.stderr, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, args.host, args.port, started=started))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = cmdline.subcommand(sub, "console", run_console,
                               "serve the web console: datasets, training jobs, personal centre (APP KEYs)",
                               epilog=EPILOG)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any)")
    parser.add_argument("--mode", choices=["local", "cluster"], default="local",
                        help="local (default): you, with your own credentials; cluster: every team, each user "
                             "logging in with APPID:APPKEY")
    parser.add_argument("--refresh", type=float, default=5.0, metavar="S",
                        help="seconds between job status refreshes in the pages (default 5)")
    local = parser.add_argument_group("local mode")
    local.add_argument("-c", "--config", metavar="CFG",
                       help="gpucluster.yaml (default: $AIDI_GPUCLUSTER_CONFIG or ~/.hobot/gpucluster.yaml; "
                            "without one: the kubeconfig)")
    local.add_argument("--current-cluster", metavar="NAME", help="use this cluster instead of current-cluster")
    local.add_argument("-C", "--dataspace-config", metavar="FILE",
                       help="hitc's config (default: ~/.olympus/config.yaml, else the local folder "
                            "~/.olympus/dataspace)")
    cluster = parser.add_argument_group("cluster mode")
    cluster.add_argument("--kube-server", metavar="URL", help="API server (default: in-cluster)")
    cluster.add_argument("--kube-ca", metavar="FILE", help="its CA bundle (default: the pod's)")
    cluster.add_argument("--kube-insecure", action="store_true", help="skip TLS verification (test clusters only)")
    cluster.add_argument("--dataspace-endpoint", metavar="URL", help="the dataspace S3 endpoint the console reads")
    cluster.add_argument("--dataspace-bucket", default="aidi", help="its bucket (default: aidi)")
    cluster.add_argument("--issuer-token-file", default=IN_CLUSTER_TOKEN, metavar="FILE",
                         help="the console ServiceAccount's token, used only for APP KEYs "
                              f"(default: {IN_CLUSTER_TOKEN})")
    cluster.add_argument("--public-ca", metavar="FILE", help="CA bundle users download for gpucluster.yaml "
                                                            "(default: --kube-ca)")
    cluster.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    shown = parser.add_argument_group("what users are told (both modes)")
    shown.add_argument("--public-server", metavar="URL",
                       help="the API server URL for gpucluster.yaml snippets, as workstations reach it")
    shown.add_argument("--dataspace-public-endpoint", metavar="URL",
                       help="the dataspace endpoint for `hitc init`, as workstations reach it")
    keys = parser.add_argument_group("APP KEYs")
    keys.add_argument("--no-appkeys", action="store_true", help="do not offer APP KEYs")
    keys.add_argument("--team-role", default="aidi-team", help="the Role an APP KEY is bound to (default: aidi-team)")
    keys.add_argument("--appkey-ttl", type=int, default=YEAR, metavar="S",
                      help=f"lifetime of an APP KEY's token in seconds (default: {YEAR}, a year)")
