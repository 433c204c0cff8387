"""`hitc model` (append, list, show, download released models) and `hitc evaltask submit`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidi.cli import common

MODEL_EPILOG = """\
examples:
  hitc model append -f model_append.yaml
  hitc model list
  hitc model show adasmini_4pe_multitask --version latest
  hitc model download adasmini_4pe_multitask --version v2 -o ./model --with-compiled

Model versions live under models/<name>/<version>/ in the dataspace, each file with its md5 and sha256;
model_append.yaml is described in docs/phase2.md.
"""

EVALTASK_EPILOG = """\
examples:
  hitc evaltask submit -f eval_task.yaml             # on the current cluster of ~/.hobot/gpucluster.yaml
  hitc evaltask submit -f eval_task.yaml --local     # here, in this process

The results (results.json, report.html) become the next version of the OUTPUT dataset; eval_task.yaml is
described in docs/phase2.md.
"""


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", "--config", metavar="CONFIG",
                        help="dataspace config (default: ~/.olympus/config.yaml; AIDI_DATASPACE_* variables win)")


def _dataspace(args: argparse.Namespace) -> Any:
    from aidi.dataspace import DataspaceConfig, open_dataspace

    return open_dataspace(DataspaceConfig.load(args.config))


def _registry(args: argparse.Namespace) -> Any:
    from aidi.models import ModelRegistry

    ds = _dataspace(args)
    return ModelRegistry(ds.store, uploader=ds.uploader), ds


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from aidi.cli.hitc import _table as table

    table(header, rows)


def _metric_line(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            main = next((value[k] for k in ("map_all_point", "miou", "map_voc11") if value.get(k) is not None), None)
            if main is not None:
                parts.append(f"{key} {main:.3f}")
        elif isinstance(value, int | float):
            parts.append(f"{key} {value:g}")
    return ", ".join(parts) or "-"


def run_append(args: argparse.Namespace) -> int:
    from aidi.models import load_append_spec

    spec = load_append_spec(args.file)
    registry, ds = _registry(args)
    record = registry.append_spec(spec, ds)
    if args.json:
        common.print_json(record.to_json())
        return 0
    size = sum(f.size for f in record.files)
    print(f"{record.name} {record.version}: stored {len(record.files)} files ({size / 1e6:.1f} MB) with md5s"
          f"{', from job ' + record.source_job if record.source_job else ''} → {record.uri}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    records = registry.list(args.name)
    if args.json:
        common.print_json([r.to_json() for r in records])
        return 0
    if not records:
        print("no models" + (f" named {args.name}" if args.name else "") + "; add one with `hitc model append -f "
              "model_append.yaml`")
        return 0
    _table(("NAME", "VERSION", "FILES", "SOURCE JOB", "METRICS", "COMPILED", "CREATED"),
           [(r.name, r.version, str(len(r.files)), r.source_job or "-", _metric_line(r.metrics),
             ",".join(a["target"] for a in r.artifacts) or "-", r.created) for r in records])
    return 0


def run_show(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    record = registry.show(args.name, args.version)
    if args.json:
        common.print_json(record.to_json())
        return 0
    print(f"{record.name} {record.version}: created {record.created} by {record.uploader}; {record.uri}")
    for label, value in (("source job", record.source_job), ("source", record.source),
                         ("description", record.description)):
        if value:
            print(f"{label}: {value}")
    if record.metrics:
        print(f"metrics: {_metric_line(record.metrics)}")
    _table(("PATH", "SIZE", "MD5"), [(f.path, str(f.size), f.md5) for f in record.files])
    for artifact in record.artifacts:
        check = artifact.get("check") or {}
        verdict = {True: "check passed", False: "check FAILED"}.get(check.get("passed"), "not checked")
        print(f"compiled {artifact['target']} ({artifact['created']}, {verdict}): "
              + ", ".join(f["path"] for f in artifact["files"]))
    return 0


def run_download(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    record, paths = registry.download(args.name, args.version, args.output, with_artifacts=args.with_compiled)
    if args.json:
        common.print_json({"name": record.name, "version": record.version, "files": [str(p) for p in paths]})
        return 0
    print(f"{record.name} {record.version}: downloaded {len(paths)} files to {Path(args.output).resolve()}, "
          "every md5 and sha256 verified")
    return 0


def run_evaltask_submit(args: argparse.Namespace) -> int:
    from aidi import evaltask

    task = evaltask.load_eval_task(args.file)
    resolved = None
    if not args.local:
        from aidi.cluster.config import resolve

        resolved = resolve(args.cluster_config, args.current_cluster)
    if args.local or resolved.cluster.type == "local":
        outcome, uploaded = evaltask.run_local(task, _dataspace(args))
        summary = outcome.results["summary"]
        if args.json:
            common.print_json({"task": task.name, "output": f"{uploaded.name}:{uploaded.type}:{uploaded.version}",
                               "summary": summary})
            return 0
        figure = (f"mAP (all-point) {summary['map_all_point']:.4f}" if outcome.results["task"] == "detection"
                  else f"mIoU {summary['miou']:.4f}")
        print(f"evaltask {task.name} ran here: {figure}; results and report in "
              f"{uploaded.name}:{uploaded.type}:{uploaded.version} ({uploaded.uri})")
        return 0
    from aidi.cluster.kube import JobClient

    job = evaltask.eval_trainjob(task)
    client = JobClient.for_cluster(resolved)
    job.metadata.namespace = client.namespace
    created = client.create_job(job.to_wire())
    if args.json:
        common.print_json(created)
        return 0
    print(f"evaltask {task.name} submitted to {resolved.name} (namespace {client.namespace}); follow it with "
          f"`traincli status {task.name}` and `traincli logs {task.name}`; the results become the next version of "
          f"{task.output}:dataset")
    return 0


def add_model_commands(sub: Any) -> None:
    family = sub.add_parser("model", help="save, list, show and download released models",
                            description="Released models: models/<name>/<version>/ in the dataspace.",
                            epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_verbose(family)
    family.set_defaults(func=lambda _args: (family.print_help(sys.stderr), 2)[1])
    commands = family.add_subparsers(title="commands", metavar="COMMAND")
    append = common.subcommand(commands, "append", run_append,
                               "store a model as a new version (files with md5, source job, metrics)",
                               epilog="example:\n  hitc model append -f model_append.yaml")
    append.add_argument("-f", "--file", required=True, help="model_append.yaml (docs/phase2.md)")
    lister = common.subcommand(commands, "list", run_list, "list models and their versions")
    lister.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    show = common.subcommand(commands, "show", run_show, "show one version: files, md5s, metrics, compiled artefacts")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download = common.subcommand(commands, "download", run_download, "download a version, verifying every md5")
    download.add_argument("name", metavar="NAME")
    download.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the files into")
    download.add_argument("--with-compiled", action="store_true", help="also the compiled artefacts (compiled/...)")
    for parser in (append, lister, show, download):
        _config_flag(parser)
        common.add_json(parser)


def add_evaltask_commands(sub: Any) -> None:
    family = sub.add_parser("evaltask", help="run an evaluation as a job", epilog=EVALTASK_EPILOG,
                            description="Evaluate predictions against ground truth in the dataspace, as a job.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_verbose(family)
    family.set_defaults(func=lambda _args: (family.print_help(sys.stderr), 2)[1])
    commands = family.add_subparsers(title="commands", metavar="COMMAND")
    submit = common.subcommand(commands, "submit", run_evaltask_submit, "submit eval_task.yaml", epilog=EVALTASK_EPILOG)
    submit.add_argument("-f", "--file", required=True, help="eval_task.yaml (docs/phase2.md)")
    submit.add_argument("--local", action="store_true", help="run here instead of on a cluster")
    submit.add_argument("-c", "--cluster-config", metavar="CFG",
                        help="gpucluster.yaml (default: ~/.hobot/gpucluster.yaml)")
    submit.add_argument("--current-cluster", metavar="NAME", help="cluster to use instead of current-cluster")
    _config_flag(submit)
    common.add_json(submit)
