"""``aidi-operator``: run the TrainJob operator against the current kubeconfig or in a cluster.

    aidi-operator                        # every namespace, credentials from in-cluster or ~/.kube/config
    aidi-operator -n team-a -n team-b    # only these namespaces

The Helm chart runs the same command; every flag also reads an environment variable (docs/operator.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import kopf

import aidi_operator  # noqa: F401  (registers the handlers)
from aidi import __version__, cmdline
from aidi.errors import UsageError
from aidi.jobs.podspec import PodHardening, PodSettings
from aidi_operator.startup import OperatorSettings, OperatorState, connection_info, kopf_settings

DESCRIPTION = """\
The AIDI TrainJob operator: turns each TrainJob into GPU pods (workers, and for multi-worker MXNet jobs
a scheduler and parameter servers), keeps the job's status, restarts failed gangs, enforces deadlines
and TTLs. Credentials: the in-cluster service account, else the current kubeconfig context.
"""

EPILOG = """\
examples:
  aidi-operator                                  # watch every namespace
  aidi-operator -n team-a --job-image registry.example/aidi/jobimage:0.1.0
  curl -s localhost:8080/healthz                 # the liveness probe
"""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    defaults = PodSettings()
    p = cmdline.new_parser("aidi-operator", DESCRIPTION, EPILOG)
    p.add_argument("--version", action="version", version=f"aidi-operator {__version__}")
    p.add_argument("-n", "--namespace", dest="namespaces", action="append", metavar="NS",
                   help="watch only this namespace (repeatable; globs like team-* work) "
                        "[env AIDI_NAMESPACES, comma-separated; default: all namespaces]")
    p.add_argument("--job-image", default=_env("AIDI_JOB_IMAGE", defaults.job_image),
                   help="image of jobs that set no spec.image [env AIDI_JOB_IMAGE; default: %(default)s]")
    p.add_argument("--fetch-image", default=_env("AIDI_FETCH_IMAGE", defaults.fetch_image),
                   help="image with the `aidi` CLI for the fetch and sync steps "
                        "[env AIDI_FETCH_IMAGE; default: %(default)s]")
    p.add_argument("--dataspace-endpoint", default=_env("AIDI_DATASPACE_ENDPOINT", defaults.dataspace_endpoint),
                   help="dataspace URL given to the pods, http(s)://host:port or file:///path "
                        "[env AIDI_DATASPACE_ENDPOINT]")
    p.add_argument("--dataspace-bucket", default=_env("AIDI_DATASPACE_BUCKET", defaults.dataspace_bucket),
                   help="dataspace bucket [env AIDI_DATASPACE_BUCKET; default: %(default)s]")
    p.add_argument("--dataspace-secret", default=_env("AIDI_DATASPACE_SECRET", defaults.dataspace_secret),
                   help="Secret in each job's namespace with keys accessKey/secretKey "
                        "[env AIDI_DATASPACE_SECRET; default: %(default)s]")
    p.add_argument("--liveness-port", type=int, default=int(_env("AIDI_LIVENESS_PORT", "8080")),
                   help="serve GET /healthz on this port, 0 for none [env AIDI_LIVENESS_PORT; default: %(default)s]")
    p.add_argument("--resync-seconds", type=float, default=float(_env("AIDI_RESYNC_SECONDS", "300")),
                   help="a safety net: reconcile every job this often even without events (deadlines, TTLs "
                        "and retries are woken when due) "
                        "[env AIDI_RESYNC_SECONDS; default: %(default)s]")
    p.add_argument("--log-tail-lines", type=int, default=int(_env("AIDI_LOG_TAIL_LINES", "50")),
                   help="log lines of a failed pod kept in status.lastFailure [default: %(default)s]")
    p.add_argument("--progress-seconds", type=float, default=float(_env("AIDI_PROGRESS_SECONDS", "120")),
                   help="refresh a running job's status.progress (kubectl get trainjobs: STEP, ETA) from worker 0's "
                        "log tail this often, each job on its own jittered schedule; 0 turns it off "
                        "[env AIDI_PROGRESS_SECONDS; default: %(default)s]")
    p.add_argument("--first-status-wait", type=float, default=float(_env("AIDI_FIRST_STATUS_WAIT", "120")),
                   metavar="SECONDS",
                   help="a new job's first status waits for the scheduler's verdict on each of its pods (placed or "
                        "unschedulable), at least 1 s and at most this long: one status write per job instead of "
                        "two when jobs arrive by the hundred [env AIDI_FIRST_STATUS_WAIT; default: %(default)s]")
    p.add_argument("--server", default=os.environ.get("AIDI_KUBE_SERVER"),
                   help="talk to this API server URL without TLS checks or credentials (a local test server)")
    p.set_defaults(func=run)
    return p


def _hardening() -> PodHardening:
    """Job pods' securityContext, requests and sizeLimits from AIDI_JOB_* (chart values jobDefaults.pods)."""
    try:
        return PodHardening.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    namespaces = args.namespaces or [n.strip() for n in os.environ.get("AIDI_NAMESPACES", "").split(",") if n.strip()]
    if args.resync_seconds <= 0:
        raise UsageError("--resync-seconds must be positive, e.g. --resync-seconds 300")
    if args.progress_seconds < 0:
        raise UsageError("--progress-seconds must be 0 (off) or positive, e.g. --progress-seconds 120")
    if args.first_status_wait < 0:
        raise UsageError("--first-status-wait must be 0 or more seconds, e.g. --first-status-wait 120")
    return OperatorSettings(
        pods=PodSettings(job_image=args.job_image, fetch_image=args.fetch_image,
                         dataspace_endpoint=args.dataspace_endpoint, dataspace_bucket=args.dataspace_bucket,
                         dataspace_secret=args.dataspace_secret, hardening=_hardening()),
        namespaces=tuple(namespaces), liveness_port=args.liveness_port, resync_seconds=args.resync_seconds,
        log_tail_lines=args.log_tail_lines, progress_seconds=args.progress_seconds,
        first_status_wait_seconds=args.first_status_wait, server=args.server,
    )


def _operator_kwargs(settings: OperatorSettings) -> dict[str, Any]:
    liveness = f"http://{settings.liveness_host}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    return {
        "registry": kopf.get_default_registry(),
        "settings": kopf_settings(settings),
        "memo": kopf.Memo(state=OperatorState(settings)),
        # One replica (the chart's Deployment); no peering objects to install.
        "standalone": True,
        "clusterwide": not settings.namespaces,
        "namespaces": list(settings.namespaces),
        "liveness_endpoint": liveness,
    }


async def operate(settings: OperatorSettings, *, stop_flag: asyncio.Event | None = None,
                  ready_flag: asyncio.Event | None = None,
                  tune: Callable[[kopf.OperatorSettings], None] | None = None) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (tests, benchmarks).

    ``tune`` adjusts kopf's own settings, e.g. shorter idle timeouts so that tests stop quickly.
    """
    kwargs = _operator_kwargs(settings)
    if tune is not None:
        tune(kwargs["settings"])
    await kopf.operator(stop_flag=stop_flag, ready_flag=ready_flag, **kwargs)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        connection_info(settings)  # no credentials: one line and exit 2, not a traceback from kopf
    except kopf.PermanentError as exc:
        raise UsageError(str(exc)) from None
    logging.getLogger().handlers.clear()  # kopf installs its own log format
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if not args.verbose:
        # kopf logs "Handler ... succeeded" for every event of every job and pod: with thousands of jobs,
        # noise that costs CPU. Failures are warnings and still show; our own logs are not kopf's.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # What is loaded by now (modules, classes, kopf, pydantic's validators: ~50,000 objects) lives as long
    # as the process. A full collection stops the event loop while it scans every tracked object, and
    # while the loop stands still no child gets created; measured: 70-95 ms of CPU per full collection
    # with 200 jobs, 20-30 ms with the startup heap frozen out of it (docs/benchmarks.md, Operator).
    gc.collect()
    gc.freeze()
    kopf.run(**_operator_kwargs(settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
