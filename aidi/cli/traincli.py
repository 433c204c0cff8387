"""`traincli`: check, submit, follow and cancel training jobs (AIDI's cluster CLI)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from aidi import cmdline
from aidi.api.loader import load_file
from aidi.cluster import explain, gpucluster, jobs
from aidi.cluster.client import JobClient, connect
from aidi.cluster.submit import submit
from aidi.errors import NotFoundError
from aidi.jobs import codepkg

log = logging.getLogger("traincli")

DESCRIPTION = """\
Submit and follow training jobs on a GPU cluster (or on this machine with a `local` cluster).

A job file is either AIDI's train_job.yaml (REQUIRED / OPTIONAL sections) or a TrainJob custom
resource (apiVersion: aidi.io/v1alpha1); see docs/trainjob.md. The cluster and its credential come
from ~/.hobot/gpucluster.yaml (`traincli init`); see docs/traincli.md.
"""

EPILOG = """\
examples:
  traincli init -t team-a:TOKEN --server https://k8s.example.com:6443
  traincli validate -f examples/train_job.yaml -o yaml
  traincli submit -f examples/train_job.yaml
  traincli status adasmini-4pe
  traincli logs adasmini-4pe -f
  traincli wait adasmini-4pe --timeout 36000 && echo trained
"""


def run_validate(args: argparse.Namespace) -> int:
    job_file = load_file(args.file)
    manifest = job_file.job.to_wire()
    if args.output == "json":
        json.dump(manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    if job_file.form == "aidi":
        print(f"# {job_file.source}: valid (AIDI form); at submit, UPLOAD_DIR {job_file.upload_dir} becomes "
              "spec.codePackage and JOB_PASSWD a Secret", file=sys.stderr)
    else:
        print(f"# {job_file.source}: valid TrainJob", file=sys.stderr)
    return 0


def run_init(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    resolved = gpucluster.init(
        token, args.config, name=args.name, server=args.server, certificate_authority=args.certificate_authority,
        insecure=args.insecure, type_=args.type,
    )
    cluster = resolved.cluster
    how = ("the embedded local runner" if cluster.runs_here else
           f"{cluster.server} with a bearer token" if cluster.appkey else "your kubeconfig")
    expires = gpucluster.token_expiry(cluster.appkey.get_secret_value()) if cluster.appkey else None
    print(f"wrote {resolved.path} (mode 0600): current-cluster {resolved.name}, namespace "
          f"{cluster.namespace or '(kubeconfig default)'}" + (f", queue {cluster.queue}" if cluster.queue else "")
          + f", via {how}" + (f"; the APP KEY expires {expires:%Y-%m-%d %H:%M} UTC" if expires else ""))
    return 0


def _client(args: argparse.Namespace) -> JobClient:
    resolved = gpucluster.resolve(args.config, args.current_cluster)
    return connect(resolved, getattr(args, "namespace", None))


def _follow_hint(args: argparse.Namespace) -> str:
    extra = "".join(f" {flag} {value}" for flag, value in (("-c", args.config),
                                                          ("--current-cluster", args.current_cluster)) if value)
    return f"traincli{extra}"


def _open_dataspace() -> object:
    from aidi.dataspace import open_dataspace

    return open_dataspace()


def run_submit(args: argparse.Namespace) -> int:
    job_file = load_file(args.file)
    password = None
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    resolved = gpucluster.resolve(args.config, args.current_cluster)
    client = connect(resolved, job_file.job.metadata.namespace)
    try:
        result = submit(job_file, resolved, client, open_dataspace=_open_dataspace,
                        max_bytes=args.max_package_size << 20, password=password)
    finally:
        client.close()
    if args.json:
        cmdline.print_json(result.to_json())
        return 0
    cmd = _follow_hint(args)
    print(f"submitted TrainJob {result.name} to cluster {result.cluster} (namespace {result.namespace})")
    if result.code_uri:
        print(f"code package: {result.package_files} files, {codepkg.human_bytes(result.package_bytes)} encrypted, "
              f"at {result.code_uri}")
    print(f"follow it with:\n  {cmd} status {result.name}\n  {cmd} logs {result.name} -f\n"
          f"  {cmd} wait {result.name}\nstop it with:\n  {cmd} cancel {result.name}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    client = _client(args)
    items = client.list_jobs()
    rows = []
    for job in items:
        status = job.get("status") or {}
        spec = job.get("spec") or {}
        phase = "Cancelled" if jobs.is_cancelled(job) else jobs.phase_of(job)
        workers = status.get("workers") or {}
        rows.append({"name": job["metadata"]["name"], "phase": phase, "reason": status.get("reason"),
                     "workers": f"{workers.get('active', 0)}/{(spec.get('workers') or {}).get('max', 1)}",
                     "gpusPerWorker": spec.get("gpusPerWorker", 1), "priority": spec.get("priority", 3),
                     "started": status.get("startTime"), "project": spec.get("projectId"),
                     "step": (status.get("progress") or {}).get("step"),
                     "eta": (status.get("progress") or {}).get("eta")})
    if args.json:
        cmdline.print_json(rows)
        return 0
    if not rows:
        print(f"no TrainJobs in namespace {client.namespace}")
        return 0
    print(f"{'NAME':<40} {'PHASE':<11} {'WORKERS':<8} {'GPUS':<5} {'PRIO':<5} {'STEP':<20} {'ETA':<9} "
          f"{'STARTED':<21} REASON")
    for row in rows:
        print(f"{row['name']:<40} {row['phase']:<11} {row['workers']:<8} {row['gpusPerWorker']!s:<5} "
              f"{row['priority']!s:<5} {row['step'] or '-':<20} {row['eta'] or '-':<9} {row['started'] or '-':<21} "
              f"{row['reason'] or ''}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get_job(args.job)
    pods = client.job_pods(args.job)
    rep = explain.report(job, pods, jobs.progress_records(client, args.job, pods))
    if args.json:
        cmdline.print_json(rep.to_json())
    else:
        print("\n".join(explain.render(rep, args.job)))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        pod = jobs.pick_pod(client.job_pods(args.job), args.job, args.worker)
    except NotFoundError:
        kept = jobs.kept_log_tail(client.get_job(args.job), args.job, args.worker)
        if kept is None:
            raise
        print(f"# pod {args.job}-worker-{args.worker} is gone; the end of its log, kept in the job's status:",
              file=sys.stderr)
        sys.stdout.write(kept)
        return 0
    name = pod["metadata"]["name"]
    container = args.container or jobs.default_container(pod)
    if args.follow:
        out = sys.stdout.buffer
        for chunk in client.stream_log(name, container, tail=args.tail):
            out.write(chunk)
            out.flush()
        return 0
    sys.stdout.write(client.pod_log(name, container, tail=args.tail, previous=args.previous))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    before = jobs.cancel(client, args.job)
    if before == "Cancelled":
        print(f"job {args.job} was already cancelled")
    else:
        print(f"cancelled job {args.job} (was {before}): its pods are being stopped; the record stays — "
              f"`traincli resume {args.job}` restarts it, `traincli delete {args.job}` removes it")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    client = _client(args)
    jobs.resume(client, args.job)
    print(f"resumed job {args.job}: its pods start again")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    removed = jobs.delete(client, args.job)
    if args.json:
        cmdline.print_json({"deleted": removed})
    else:
        print(f"deleted {', '.join(removed)} (its pods go with it)")
    return 0


def run_wait(args: argparse.Namespace) -> int:
    client = _client(args)

    def show(phase: str, job: dict) -> None:
        if not args.json:
            print(f"{args.job}: {phase}", file=sys.stderr, flush=True)

    result = jobs.wait(client, args.job, timeout=args.timeout, interval=args.interval, on_change=show)
    if args.json:
        cmdline.print_json(result.to_json())
    else:
        detail = f" ({result.reason}: {result.message})" if result.reason or result.message else ""
        verdict = "timed out" if result.exit_code == jobs.EXIT_TIMEOUT else result.phase
        print(f"{args.job}: {verdict}{detail} after {result.waited_seconds:.0f}s")
    return result.exit_code


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="CFG",
                        help="cluster config (default: $AIDI_GPUCLUSTER_CONFIG or ~/.hobot/gpucluster.yaml)")
    parser.add_argument("--current-cluster", metavar="NAME", help="use this cluster instead of current-cluster")


def _job_command(sub: argparse._SubParsersAction, name: str, handler: cmdline.Handler, help_text: str,
                 epilog: str | None = None, json_flag: bool = True) -> argparse.ArgumentParser:
    parser = cmdline.subcommand(sub, name, handler, help_text, epilog=epilog)
    parser.add_argument("job", metavar="JOB", help="the job's name (JOB_NAME)")
    _cluster_flags(parser)
    parser.add_argument("-n", "--namespace", help="namespace (default: the cluster's appid)")
    if json_flag:
        cmdline.add_json(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = cmdline.new_parser("traincli", DESCRIPTION, EPILOG)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = cmdline.subcommand(
        sub, "init", run_init, "save the cluster and its credential to ~/.hobot/gpucluster.yaml",
        epilog="TOKEN is APPID:APPKEY — the namespace (or NAMESPACE/QUEUE) and a bearer token — or APPID alone to\n"
               "use your kubeconfig. `-t -` reads it from stdin, keeping it out of `ps` and shell history.\n\n"
               "examples:\n"
               "  traincli init -t team-a:eyJhbGciOi... --server https://k8s.example.com:6443 \\\n"
               "      --certificate-authority ca.crt\n"
               "  traincli init -t team-a            # kubeconfig credentials, namespace team-a\n"
               "  traincli init --type local --name laptop",
    )
    init.add_argument("-t", "--token", default="", help="APPID:APPKEY, APPID, or - to read it from stdin")
    init.add_argument("-c", "--config", metavar="CFG", help="file to write (default: ~/.hobot/gpucluster.yaml)")
    init.add_argument("--name", default=gpucluster.DEFAULT_CLUSTER_NAME,
                      help=f"the cluster's name in the file (default: {gpucluster.DEFAULT_CLUSTER_NAME})")
    init.add_argument("--server", help="API server URL, e.g. https://k8s.example.com:6443")
    tls = init.add_mutually_exclusive_group()
    tls.add_argument("--certificate-authority", metavar="FILE", help="CA bundle that signed the server's certificate")
    tls.add_argument("--insecure", action="store_true", help="skip TLS verification (test clusters only)")
    init.add_argument("--type", choices=["kubernetes", "local"], default="kubernetes",
                      help="kubernetes (default) or local: the embedded single-machine runner")

    validate = cmdline.subcommand(
        sub, "validate", run_validate, "check a job file and print the TrainJob it would submit",
        epilog="exit codes: 0 valid, 2 invalid (every problem is listed with its field and fix)",
    )
    validate.add_argument("-f", "--file", required=True, help="train_job.yaml or a TrainJob manifest")
    validate.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                          help="format of the printed TrainJob (default: yaml)")

    sub_submit = cmdline.subcommand(
        sub, "submit", run_submit, "pack, encrypt and upload the code, then create the job",
        epilog="UPLOAD_DIR is packed (minus what .aidiignore lists), encrypted with JOB_PASSWD and uploaded to\n"
               "the dataspace configured by `hitc init`; the password goes to the Secret <job>-code only.\n\n"
               "examples:\n  traincli submit -f train_job.yaml\n"
               "  traincli submit -f trainjob.yaml --current-cluster prod --json",
    )
    sub_submit.add_argument("-f", "--file", required=True, help="train_job.yaml or a TrainJob manifest")
    _cluster_flags(sub_submit)
    sub_submit.add_argument("--max-package-size", type=int, default=codepkg.DEFAULT_MAX_BYTES >> 20, metavar="MIB",
                            help=f"refuse code packages larger than this (default: {codepkg.DEFAULT_MAX_BYTES >> 20})")
    sub_submit.add_argument("--password-file", metavar="FILE",
                            help="password for a TrainJob manifest whose aidi.io/upload-dir annotation names a "
                                 "code folder (train_job.yaml carries its own JOB_PASSWD)")
    cmdline.add_json(sub_submit)

    lister = cmdline.subcommand(sub, "list", run_list, "list the jobs in the namespace")
    _cluster_flags(lister)
    lister.add_argument("-n", "--namespace", help="namespace (default: the cluster's appid)")
    cmdline.add_json(lister)

    _job_command(sub, "status", run_status, "phase, conditions, pods, and why a job is stuck or failed")
    logs = _job_command(sub, "logs", run_logs, "print (or follow) a worker's log", json_flag=False,
                        epilog="examples:\n  traincli logs adasmini-4pe -f\n"
                               "  traincli logs adasmini-4pe --worker 1 --previous   # before its last restart\n"
                               "  traincli logs adasmini-4pe --container fetch-code  # the code fetch step")
    logs.add_argument("--worker", type=int, default=0, metavar="I", help="worker index (default: 0)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the worker ends")
    logs.add_argument("--container", help="container or init container (default: the main container)")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--previous", action="store_true", help="the log of the container's previous run")
    _job_command(sub, "cancel", run_cancel, "stop the job's pods and keep its record (spec.suspend)", json_flag=False)
    _job_command(sub, "resume", run_resume, "restart a cancelled job", json_flag=False)
    _job_command(sub, "delete", run_delete, "remove the job, its pods and its Secret")
    wait = _job_command(
        sub, "wait", run_wait, "wait for the job to finish; the exit code is its result",
        epilog=f"exit codes: {jobs.EXIT_SUCCEEDED} Succeeded, {jobs.EXIT_FAILED} Failed, {jobs.EXIT_CANCELLED} "
               f"cancelled, {jobs.EXIT_TIMEOUT} timed out, 3 no such job",
    )
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 124)")
    wait.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between checks (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
