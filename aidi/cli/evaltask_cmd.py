"""`hitc evaltask submit`: run eval_task.yaml here or as a job on the current cluster (docs/phase2.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aidi import cmdline
from aidi.cli import dataspace_args

EVALTASK_EPILOG = """\
examples:
  hitc evaltask submit -f eval_task.yaml             # on the current cluster of ~/.hobot/gpucluster.yaml
  hitc evaltask submit -f eval_task.yaml --local     # here, in this process

The results (results.json, report.html) become the next version of the OUTPUT dataset; eval_task.yaml is
described in docs/phase2.md.
"""



def run_evaltask_submit(args: argparse.Namespace) -> int:
    from aidi.evaluate import task as evaltask

    task = evaltask.load_eval_task(args.file)
    resolved = None
    if not args.local:
        from aidi.cluster.gpucluster import resolve

        resolved = resolve(args.cluster_config, args.current_cluster)
    if resolved is None or resolved.cluster.runs_here:
        outcome, uploaded = evaltask.run_local(task, dataspace_args.open_from(args))
        summary = outcome.results["summary"]
        if args.json:
            cmdline.print_json({"task": task.name, "output": f"{uploaded.name}:{uploaded.type}:{uploaded.version}",
                               "summary": summary})
            return 0
        figure = (f"mAP (all-point) {summary['map_all_point']:.4f}" if outcome.results["task"] == "detection"
                  else f"mIoU {summary['miou']:.4f}")
        print(f"evaltask {task.name} ran here: {figure}; results and report in "
              f"{uploaded.name}:{uploaded.type}:{uploaded.version} ({uploaded.uri})")
        return 0
    from aidi.cluster.client import connect

    job = evaltask.eval_trainjob(task)
    client = connect(resolved)
    job.metadata.namespace = client.namespace
    created = client.create_job(job.to_wire())
    if args.json:
        cmdline.print_json(created)
        return 0
    print(f"evaltask {task.name} submitted to {resolved.name} (namespace {client.namespace}); follow it with "
          f"`traincli status {task.name}` and `traincli logs {task.name}`; the results become the next version of "
          f"{task.output}:dataset")
    return 0


def add_commands(sub: Any) -> None:
    family = sub.add_parser("evaltask", help="run an evaluation as a job", epilog=EVALTASK_EPILOG,
                            description="Evaluate predictions against ground truth in the dataspace, as a job.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    cmdline.add_verbose(family)
    family.set_defaults(func=lambda _args: (family.print_help(sys.stderr), 2)[1])
    commands = family.add_subparsers(title="commands", metavar="COMMAND")
    submit = cmdline.subcommand(commands, "submit", run_evaltask_submit, "submit eval_task.yaml",
                                epilog=EVALTASK_EPILOG)
    submit.add_argument("-f", "--file", required=True, help="eval_task.yaml (docs/phase2.md)")
    submit.add_argument("--local", action="store_true", help="run here instead of on a cluster")
    submit.add_argument("-c", "--cluster-config", metavar="CFG",
                        help="gpucluster.yaml (default: ~/.hobot/gpucluster.yaml)")
    submit.add_argument("--current-cluster", metavar="NAME", help="cluster to use instead of current-cluster")
    dataspace_args.add_config(submit)
    cmdline.add_json(submit)
