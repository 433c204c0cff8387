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
  hitc model show adasmini_4pe_multitask --version latest
  hitc model download adasmini_4pe_multitask --version v2 -o ./model --with-compiled

Model versions live under models/<name>/<version>/ in the dataspace, each file with its md5 and sha256;
model_append.yaml is described in docs/phase2.md.
"""



def _registry(args: argparse.Namespace) -> Any:
    from aidi.dataspace.registry import ModelRegistry

    ds = dataspace_args.open_from(args)
    return ModelRegistry(ds.store, uploader=ds.uploader), ds



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
    if record.metrics:
        print(f"metrics: {_metric_line(record.metrics)}")
    cmdline.print_table(("PATH", "SIZE", "MD5"), [(f.path, str(f.size), f.md5) for f in record.files])
    for artifact in record.artifacts:
        check = artifact.get("check") or {}
        passed = check.get("passed")
        verdict = "check passed" if passed is True else "check FAILED" if passed is False else "not checked"
        print(f"compiled {artifact['target']} ({artifact['created']}, {verdict}): "
              + ", ".join(f["path"] for f in artifact["files"]))
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
    show = cmdline.subcommand(commands, "show", run_show, "show one version: files, md5s, metrics, compiled artefacts")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download = cmdline.subcommand(commands, "download", run_download, "download a version, verifying every md5")
    download.add_argument("name", metavar="NAME")
    download.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    download.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the files into")
    download.add_argument("--with-compiled", action="store_true", help="also the compiled artefacts (compiled/...)")
    for parser in (append, lister, show, download):
        dataspace_args.add_config(parser)
        cmdline.add_json(parser)


