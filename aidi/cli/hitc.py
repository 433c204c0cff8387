"""`hitc`: the dataspace CLI (AIDI's `hitc`): configure access, upload, list, show, download, delete datasets."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from aidi import __version__, cmdline
from aidi.cli import dataspace_args, evaltask_cmd, model_cmd
from aidi.dataspace import (
    BINDING_TYPES,
    DATASET_TYPES,
    LATEST,
    DataspaceConfig,
    Manifest,
    TransferProgress,
    TransferResult,
    open_store,
)
from aidi.dataspace.endpoint import DEFAULT_BUCKET, ENV_ENDPOINT, config_path
from aidi.errors import NotFoundError, UsageError

DESCRIPTION = """\
The dataspace CLI: versioned datasets in object storage (MinIO/S3, or a local folder).

Start with `hitc init -t ACCESS_KEY:SECRET_KEY --endpoint http://minio.example.com:9000`, then
`hitc dataspace upload -n adasmini_4pe -t trainset -f data/rec/`. See docs/dataspace.md.
"""

EPILOG = """\
examples:
  hitc init -t AKIA...:wJal... --endpoint https://minio.example.com --bucket aidi
  hitc dataspace upload -n adasmini_4pe -t trainset -f data/rec/
  hitc dataspace list
  hitc dataspace show adasmini_4pe -t trainset
  hitc dataspace download adasmini_4pe -t trainset --version latest -o /tmp/adasmini
  hitc dataspace upload -d adasmini_4pe -t gt -f gt.json
  hitc dataspace rm adasmini_4pe -t trainset --version v1
"""

MB = 1024 * 1024


# -- handlers: map arguments onto library calls ------------------------------------------------------------


def run_init(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        previous = DataspaceConfig.load(path) if path.exists() else None
    except UsageError:
        previous = None  # a broken file is what init is for: replace it
    endpoint = args.endpoint or (previous.endpoint if previous else None)
    if not endpoint:
        raise UsageError("pass --endpoint http(s)://HOST[:PORT] (the dataspace's S3 address) or file:///PATH "
                         "(a local folder)")
    config = DataspaceConfig(endpoint=endpoint, bucket=args.bucket or (previous.bucket if previous else DEFAULT_BUCKET),
                             region=args.region or (previous.region if previous else None), source="hitc init")
    token = _read_token(args.token)
    if token:
        config = config.with_token(token)
    elif not config.is_local:
        raise UsageError("an S3 endpoint needs a token: hitc init -t ACCESS_KEY:SECRET_KEY (or -t - to read it "
                         "from stdin)")
    if not args.no_check:
        open_store(config).check(create=args.create_bucket)
    written = config.save(path)
    who = f", access key {config.access_key}" if config.access_key else ""
    checked = "" if args.no_check else "; connection checked"
    print(f"wrote {written} (mode 0600): dataspace {config.endpoint}, bucket {config.bucket}{who}{checked}")
    if os.environ.get(ENV_ENDPOINT) and args.config is None:
        print(f"note: {ENV_ENDPOINT} is set in this shell and wins over {written} until you unset it",
              file=sys.stderr)
    return 0


def run_upload(args: argparse.Namespace) -> int:
    ds = dataspace_args.open_from(args)
    try:
        with TransferPrinter("upload", enabled=not args.quiet) as printer:
            if args.dataset:
                result = ds.bind_annotations(args.dataset, args.type, args.file, progress=printer.update)
            else:
                result = ds.upload_dataset(args.name, args.type, args.file, jobs=args.jobs, progress=printer.update)
    except KeyboardInterrupt:
        print("hitc: upload interrupted; no new version is visible. Run the same command again to resume "
              "(files already stored are skipped).", file=sys.stderr)
        raise
    return _report(args, result, upload_summary)


def run_download(args: argparse.Namespace) -> int:
    ds = dataspace_args.open_from(args)
    with TransferPrinter("download", enabled=not args.quiet) as printer:
        result = ds.download_dataset(args.name, args.type, args.version, args.output, jobs=args.jobs,
                                     progress=printer.update)
    return _report(args, result, download_summary)


def run_list(args: argparse.Namespace) -> int:
    summaries = dataspace_args.open_from(args).list_datasets(args.name)
    if args.json:
        cmdline.print_json([asdict(summary) for summary in summaries])
        return 0
    if not summaries:
        print("no datasets" + (f" named {args.name}" if args.name else "") +
              "; upload one with `hitc dataspace upload -n NAME -t TYPE -f PATH`")
        return 0
    rows = [(s.name, s.type, s.latest or "-", str(len(s.versions)), str(s.latest_files), _mb(s.latest_size),
             s.latest_created or "") for s in summaries]
    cmdline.print_table(("NAME", "TYPE", "LATEST", "VERSIONS", "FILES", "SIZE", "CREATED"), rows)
    return 0


def run_show(args: argparse.Namespace) -> int:
    ds = dataspace_args.open_from(args)
    if args.used_by:
        return _show_used_by(args, ds)
    if args.type and args.version:
        manifest = ds.resolve(args.name, args.type, args.version)
        if args.json:
            cmdline.print_json(manifest.to_json())
        else:
            print_manifest(manifest)
        return 0
    summaries = [s for s in ds.list_datasets(args.name) if not args.type or s.type == args.type]
    if not summaries:
        ds.resolve(args.name, args.type or "trainset")  # raises the NotFoundError that says what exists
        raise NotFoundError(f"dataset {args.name!r} has no complete version")
    details = []
    for summary in summaries:
        manifests = [ds.resolve(summary.name, summary.type, version) for version in summary.versions]
        details.append({"name": summary.name, "type": summary.type, "latest": summary.latest,
                        "versions": [_version_json(m) for m in manifests],
                        "pending": ds.pending_versions(summary.name, summary.type)})
    if args.json:
        cmdline.print_json(details)
        return 0
    for detail in details:
        print(f"{detail['name']}/{detail['type']} (latest: {detail['latest']})")
        cmdline.print_table(("VERSION", "FILES", "SIZE", "RECORDS", "UPLOADER", "CREATED"),
               [(v["version"], str(v["file_count"]), _mb(v["total_size"]), str(v.get("records") or "-"),
                 v["uploader"], v["created"]) for v in detail["versions"]], indent="  ")
        for pending in detail["pending"]:
            print(f"  {pending['version']}: unfinished upload by {pending['uploader']} since {pending['started']} "
                  "(re-run that upload to finish it, or remove it with `hitc dataspace rm`)")
    return 0


def _show_used_by(args: argparse.Namespace, ds: Any) -> int:
    """The model versions trained on (or made from) one dataset version: lineage read backwards."""
    from aidi.dataspace.registry import ModelRegistry

    if not args.type:
        raise UsageError("--used-by needs the dataset's type: hitc dataspace show NAME -t trainset --version v3 "
                         "--used-by")
    manifest = ds.resolve(args.name, args.type, args.version or "latest")
    models = ModelRegistry(ds.store).used_by(args.name, args.type, manifest.version)
    if args.json:
        cmdline.print_json({"name": args.name, "type": args.type, "version": manifest.version,
                            "used_by": [{"name": m.name, "version": m.version, "job": m.source_job,
                                         "created": m.created, "lineage": m.lineage} for m in models]})
        return 0
    what = f"{args.name}/{args.type} {manifest.version}"
    if not models:
        print(f"no model version records {what} in its lineage")
        return 0
    print(f"model versions trained on {what}:")
    cmdline.print_table(("MODEL", "VERSION", "JOB", "JOB UID", "CREATED"),
                        [(m.name, m.version, m.source_job or "-",
                          str(((m.lineage or {}).get("job") or {}).get("uid") or "-"), m.created) for m in models],
                        indent="  ")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    ds = dataspace_args.open_from(args)
    try:
        manifest = ds.resolve(args.name, args.type, args.version)
        what = f"{args.name}/{args.type} {manifest.version} ({len(manifest.files)} files, {_mb(manifest.total_size)})"
    except NotFoundError:
        if args.version not in {p["version"] for p in ds.pending_versions(args.name, args.type)}:
            raise
        what = f"the unfinished upload {args.name}/{args.type} {args.version}"
    if not args.yes and not confirm(f"delete {what}? This cannot be undone [y/N] "):
        print("nothing deleted")
        return 1
    removed = ds.delete_version(args.name, args.type, args.version)
    print(f"deleted {what}: {removed} objects")
    return 0


# -- presentation -------------------------------------------------------------------------------------------


class TransferPrinter:
    """Progress in files and bytes on stderr: redrawn in place on a terminal, every few seconds in logs."""

    def __init__(self, verb: str, enabled: bool = True, stream: Any = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else 5.0
        self.start = time.monotonic()
        self.last = self.start  # nothing printed for work that ends within the first interval
        self.drawn = False

    def update(self, state: TransferProgress) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.interval and state.phase != "done"):
            return
        self.last = now
        if state.phase == "done":
            if self.tty and self.drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
            return
        rate = state.bytes_done / MB / max(now - self.start, 1e-6)
        line = (f"{state.phase}: {state.files_done}/{state.files_total} files, "
                f"{state.bytes_done / MB:.1f}/{state.bytes_total / MB:.1f} MB, {rate:.1f} MB/s")
        if state.files_skipped:
            line += f", {state.files_skipped} already present"
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.drawn = True

    def __enter__(self) -> TransferPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def upload_summary(result: TransferResult) -> str:
    where = f"{result.name}/{result.type} {result.version}"
    if result.unchanged:
        return (f"{where} already holds these {_files(result.files)} ({_mb(result.bytes)}); nothing uploaded, "
                "no new version")
    rate = result.transferred_bytes / MB / max(result.seconds, 1e-6)
    return (f"{where}: uploaded {_files(result.transferred_files)} / {_mb(result.transferred_bytes)}, "
            f"{result.skipped_files} already present ({result.seconds:.1f} s, {rate:.1f} MB/s) → {result.uri}")


def download_summary(result: TransferResult) -> str:
    rate = result.transferred_bytes / MB / max(result.seconds, 1e-6)
    return (f"{result.name}/{result.type} {result.version}: downloaded {_files(result.transferred_files)} / "
            f"{_mb(result.transferred_bytes)}, {result.skipped_files} already present, every sha256 verified "
            f"({result.seconds:.1f} s, {rate:.1f} MB/s) → {result.uri}")


def print_manifest(manifest: Manifest) -> None:
    print(f"{manifest.name}/{manifest.type} {manifest.version}: {len(manifest.files)} files, "
          f"{_mb(manifest.total_size)}, uploaded by {manifest.uploader} at {manifest.created}")
    if manifest.binds:
        bound = ", ".join(f"{t} {v}" for t, v in manifest.binds.get("versions", {}).items())
        print(f"bound to {manifest.binds.get('dataset')} ({bound})")
    cmdline.print_table(("PATH", "SIZE", "RECORDS", "SHA256"),
           [(e.path, str(e.size), "-" if e.records is None else str(e.records), e.sha256) for e in manifest.files])


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("refusing to delete without confirmation: pass -y (no terminal to ask on)")
    return input(question).strip().lower() in ("y", "yes")


def _version_json(manifest: Manifest) -> dict[str, Any]:
    data = manifest.to_json()
    data.pop("files")
    return data


def _report(args: argparse.Namespace, result: TransferResult, summary: Callable[[TransferResult], str]) -> int:
    if args.json:
        data = asdict(result)
        data.pop("manifest")
        cmdline.print_json(data)
    else:
        print(summary(result))
    return 0


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def _read_token(value: str | None) -> str:
    if value == "-":
        return sys.stdin.readline().strip()
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("dataspace token (ACCESS_KEY:SECRET_KEY, empty for a local folder): ").strip()
    return ""


# -- parser ---------------------------------------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _transfer_flags(parser: argparse.ArgumentParser) -> None:
    cmdline.add_jobs(parser, default=8)
    cmdline.add_json(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_dataspace_commands(sub: Any) -> None:
    family = sub.add_parser("dataspace", help="upload, list, show, download and delete datasets",
                            description="Versioned datasets: datasets/<name>/<type>/<version>/ in the dataspace.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    cmdline.add_verbose(family)
    family.set_defaults(func=lambda _args: _usage(family))
    commands = family.add_subparsers(title="commands", metavar="COMMAND")

    upload = cmdline.subcommand(
        commands, "upload", run_upload, "upload a file or folder as a new version, or bind gt/pr JSON to a dataset",
        epilog="examples:\n  hitc dataspace upload -n adasmini_4pe -t trainset -f data/rec/\n"
               "  hitc dataspace upload -d adasmini_4pe -t gt -f gt.json\n\n"
               "An interrupted upload is never visible as a version; run the same command again to resume it\n"
               "(files already stored with the same sha256 are skipped).")
    target = upload.add_mutually_exclusive_group(required=True)
    target.add_argument("-n", "--name", help="dataset name: the upload becomes its next version")
    target.add_argument("-d", "--dataset", help="image dataset to bind ground truth (-t gt) or predictions (-t pr) to")
    upload.add_argument("-t", "--type", required=True, choices=[*DATASET_TYPES, *BINDING_TYPES],
                        help="dataset type (gt/pr only with -d)")
    upload.add_argument("-f", "--file", required=True, metavar="PATH",
                        help="a file, or a folder whose files are all uploaded with their relative paths")
    dataspace_args.add_config(upload)
    _transfer_flags(upload)

    lister = cmdline.subcommand(commands, "list", run_list, "list datasets and their latest versions")
    lister.add_argument("name", nargs="?", metavar="NAME", help="only this dataset")
    dataspace_args.add_config(lister)
    cmdline.add_json(lister)

    show = cmdline.subcommand(commands, "show", run_show, "show a dataset's versions, or one version's files",
                             epilog="examples:\n  hitc dataspace show adasmini_4pe\n"
                                    "  hitc dataspace show adasmini_4pe -t trainset --version latest\n"
                                    "  hitc dataspace show adasmini_4pe -t trainset --version v3 --used-by")
    show.add_argument("name", metavar="NAME")
    show.add_argument("-t", "--type", help="only this type")
    show.add_argument("--version", help="with -t: list this version's files (v1, v2, ... or latest)")
    show.add_argument("--used-by", action="store_true",
                      help="with -t: the model versions trained on this dataset version (default: latest), "
                           "from their lineage")
    dataspace_args.add_config(show)
    cmdline.add_json(show)

    download = cmdline.subcommand(commands, "download", run_download,
                                 "download a version into a folder, verifying every sha256")
    download.add_argument("name", metavar="NAME")
    download.add_argument("-t", "--type", required=True, help="dataset type")
    download.add_argument("--version", default=LATEST, help="v1, v2, ... or latest (default)")
    download.add_argument("-o", "--output", required=True, metavar="DIR",
                          help="folder to write the files into (files already there with the right sha256 are kept)")
    dataspace_args.add_config(download)
    _transfer_flags(download)

    rm = cmdline.subcommand(commands, "rm", run_rm, "delete one version (asks first)",
                           epilog="The version number is never reused; `latest` moves to the newest remaining one.")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("-t", "--type", required=True, help="dataset type")
    rm.add_argument("--version", required=True, help="the version to delete, e.g. v3")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    dataspace_args.add_config(rm)


# Command families after `init`; later ones (model, evaltask) append their builder here.
FAMILIES = [add_dataspace_commands, model_cmd.add_commands, evaltask_cmd.add_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = cmdline.new_parser("hitc", DESCRIPTION, EPILOG)
    parser.add_argument("--version", action="version", version=f"hitc {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    init = cmdline.subcommand(
        sub, "init", run_init, "write the dataspace config (~/.olympus/config.yaml, mode 0600)",
        epilog="The token is the dataspace's S3 access key and secret key joined by a colon. `-t -` reads it\n"
               "from stdin, and without -t it is asked for, so it stays out of your shell history and `ps`.\n\n"
               "examples:\n  hitc init -t ACCESS_KEY:SECRET_KEY --endpoint https://minio.example.com --bucket aidi\n"
               "  hitc init --endpoint file:///srv/aidi-dataspace")
    init.add_argument("-t", "--token", help="ACCESS_KEY:SECRET_KEY, or - to read it from stdin")
    init.add_argument("--endpoint", metavar="URL",
                      help="http(s)://HOST[:PORT] of the S3 server, or file:///PATH (default: the current one)")
    init.add_argument("--bucket", help=f"bucket (default: the current one, else {DEFAULT_BUCKET})")
    init.add_argument("--region", help="S3 region, if the server needs one")
    init.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    init.add_argument("--no-check", action="store_true", help="write the file without contacting the server")
    dataspace_args.add_config(init)
    for add_family in FAMILIES:
        add_family(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
