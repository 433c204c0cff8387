"""`hitc model`: append, list, show and download released models (the registry: docs/phase2.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidi import cmdline
from aidi.cli import dataspace_args

MODEL_EPILOG = """\
examples:
  hitc model append -f model_append.yaml
  hitc model list
  hitc model list --metrics                       # versions side by side: mAP per scene, mIoU, size
  hitc model show adasmini_4pe_multitask --version latest
  hitc model report adasmini_4pe_multitask --version v2 --label vehicle --eval-dir eval/vehicle
  hitc model download adasmini_4pe_multitask --version v2 -o ./model --with-compiled

Model versions live under models/<name>/<version>/ in the dataspace, each file with its md5 and sha256;
model_append.yaml is described in docs/phase2.md.
"""



def _registry(args: argparse.Namespace) -> Any:
    from aidi.dataspace.registry import ModelRegistry

    ds = dataspace_args.open_from(args)
    return ModelRegistry(ds.store, uploader=ds.uploader), ds



def _metric_line(metrics: dict[str, Any]) -> str:
    from aidi.dataspace.registry import main_figure

    parts = [f"{key} {fig[1]:.3f}" if isinstance(metrics[key], dict) else f"{key} {fig[1]:g}"
             for key in metrics if (fig := main_figure(metrics[key])) is not None]
    return ", ".join(parts) or "-"


def compare_table(records: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Versions side by side: one column per metric any of them has (mAP per scene, mIoU, ...), and the size."""
    from aidi.dataspace.registry import metric_columns

    columns, values = metric_columns(records)
    headers = ["NAME", "VERSION", *columns.values(), "SIZE", "JOB", "CREATED"]
    rows = [[r.name, r.version, *("-" if v is None else f"{v:.4g}" for v in row),
             f"{sum(f.size for f in r.files) / 1e6:.1f} MB", r.source_job or "-", r.created]
            for r, row in zip(records, values, strict=True)]
    return headers, rows


def run_append(args: argparse.Namespace) -> int:
    from aidi.dataspace.registry import load_append_spec

    spec = load_append_spec(args.file)
    registry, ds = _registry(args)
    record = registry.append_spec(spec, ds)
    if args.json:
        cmdline.print_json(record.to_json())
        return 0
    size = sum(f.size for f in record.files)
    print(f"{record.name} {record.version}: stored {len(record.files)} files ({size / 1e6:.1f} MB) with md5s"
          f"{', from job ' + record.source_job if record.source_job else ''} → {record.uri}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    records = registry.list(args.name)
    if args.json:
        cmdline.print_json([r.to_json() for r in records])
        return 0
    if not records:
        print("no models" + (f" named {args.name}" if args.name else "") + "; add one with `hitc model append -f "
              "model_append.yaml`")
        return 0
    if args.metrics:
        headers, rows = compare_table(records)
        cmdline.print_table(tuple(headers), [tuple(r) for r in rows])
        return 0
    cmdline.print_table(("NAME", "VERSION", "FILES", "SOURCE JOB", "METRICS", "COMPILED", "CREATED"),
           [(r.name, r.version, str(len(r.files)), r.source_job or "-", _metric_line(r.metrics),
             ",".join(a["target"] for a in r.artifacts) or "-", r.created) for r in records])
    return 0


def run_show(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    record = registry.show(args.name, args.version)
    if args.json:
        cmdline.print_json(record.to_json())
        return 0
    print(f"{record.name} {record.version}: created {record.created} by {record.uploader}; {record.uri}")
    for label, value in (("source job", record.source_job), ("source", record.source),
                         ("description", record.description)):
        if value:
            print(f"{label}: {value}")
    if record.metrics or record.reports:
        print(f"metrics: {_metric_line(record.all_metrics())}")
    for line in lineage_lines(record.lineage):
        print(line)
    cmdline.print_table(("PATH", "SIZE", "MD5"), [(f.path, str(f.size), f.md5) for f in record.files])
    for artifact in record.artifacts:
        check = artifact.get("check") or {}
        passed = check.get("passed")
        verdict = "check passed" if passed is True else "check FAILED" if passed is False else "not checked"
        print(f"compiled {artifact['target']} ({artifact['created']}, {verdict}): "
              + ", ".join(f["path"] for f in artifact["files"]))
    for report in record.reports:
        where = f"{record.uri}eval/{report['label']}/" if record.uri else ""
        print(f"report {report['label']} ({report['created']}): {_metric_line({report['label']: report['summary']})}"
              + (f" → {where}{report['report']}" if report.get("report") else ""))
    return 0


def lineage_lines(lineage: dict[str, Any] | None) -> list[str]:
    """job → datasets → this model, as `hitc model show` prints it."""
    if not lineage:
        return ["lineage: none recorded (the files did not come with a job record, aidi-job.json)"]
    job = lineage.get("job") or {}
    lines = [f"trained by job: {job.get('namespace') or '?'}/{job.get('name') or '?'} (uid {job.get('uid') or '?'}), "
             f"image {job.get('image') or '?'}, code package sha256 {job.get('code_sha256') or '?'}"]
    for d in lineage.get("datasets") or []:
        requested = d.get("requested")
        asked = f" (asked for {requested})" if requested and requested != d.get("version") else ""
        lines.append(f"  trained on: {d.get('name')}/{d.get('type')} {d.get('version')}{asked}")
    output = lineage.get("output")
    if output:
        lines.append(f"  from output: {output.get('name')}/{output.get('type')} {output.get('version')}")
    return lines


def run_report(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    report = registry.attach_report(args.name, args.version, args.label, Path(args.eval_dir))
    if args.json:
        cmdline.print_json(report)
        return 0
    print(f"stored report {report['label']} ({len(report['files'])} files) with {args.name} {args.version}: "
          f"{_metric_line({report['label']: report['summary']})}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    record, paths = registry.download(args.name, args.version, args.output, with_artifacts=args.with_compiled)
    if args.json:
        cmdline.print_json({"name": record.name, "version": record.version, "files": [str(p) for p in paths]})
        return 0
    print(f"{record.name} {record.version}: downloaded {len(paths)} files to {Path(args.output).resolve()}, "
          "every md5 and sha256 verified")
    return 0


def add_commands(sub: Any) -> None:
    family = sub.add_parser("model", help="save, list, show and download released models",
                            description="Released models: models/<name>/<version>/ in the dataspace.",
                            epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmdline.add_verbose(family)
    family.set_defaults(func=lambda _args: (family.print_help(sys.stderr), 2)[1])
    commands = family.add_subparsers(title="commands", metavar="COMMAND")
    append = cmdline.subcommand(commands, "append", run_append,
                               "store a model as a new version (files with md5, source job, metrics)",
                               epilog="example:\n  hitc model append -f model_append.yaml")
    append.add_argument("-f", "--file", required=True, help="model_append.yaml (docs/phase2.md)")
    lister = cmdline.subcommand(commands, "list", run_list, "list models and their versions")
    lister.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    lister.add_argument("--metrics", action="store_true",
                        help="versions side by side: one column per metric (mAP per scene, mIoU), and the size")
    show = cmdline.subcommand(commands, "show", run_show, "show one version: files, md5s, metrics, compiled artefacts")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download = cmdline.subcommand(commands, "download", run_download, "download a version, verifying every md5")
    download.add_argument("name", metavar="NAME")
    download.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the files into")
    download.add_argument("--with-compiled", action="store_true", help="also the compiled artefacts (compiled/...)")
    report = cmdline.subcommand(commands, "report", run_report,
                                "store an `aidi eval` output (results.json, report.html) with a version",
                                epilog="example:\n  aidi eval --gt data/rec/vehicle/val.rec --pr val_pr.json "
                                       "--out eval/vehicle\n  hitc model report adasmini_4pe_multitask --version v2 "
                                       "--label vehicle --eval-dir eval/vehicle")
    report.add_argument("name", metavar="NAME")
    report.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    report.add_argument("--label", required=True, help="what the report scores, e.g. the scene: vehicle")
    report.add_argument("--eval-dir", required=True, metavar="DIR", help="the folder `aidi eval --out` wrote")
    for parser in (append, lister, show, download, report):
        dataspace_args.add_config(parser)
        cmdline.add_json(parser)


