"""`aidi fetch-code | fetch-data | sync-output`: the steps a job's pods run around the trainer.

The command lines are a contract with the operator (docs/architecture.md, "Inside a job's pods"); the
dataspace comes from the pod's environment (AIDI_DATASPACE_ENDPOINT, _BUCKET, _ACCESS_KEY, _SECRET_KEY).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from aidi import cmdline

_ENV_NOTE = ("the dataspace is read from AIDI_DATASPACE_ENDPOINT (http(s)://HOST:PORT or file:///PATH),\n"
             "AIDI_DATASPACE_BUCKET, AIDI_DATASPACE_ACCESS_KEY and AIDI_DATASPACE_SECRET_KEY")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def run_fetch_code(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps  # the dataspace client loads only when a step runs, not for `aidi --help`
    from aidi.jobs.codepkg import UnpackLimits

    defaults = UnpackLimits.from_env()
    limits = UnpackLimits(
        max_bytes=args.max_unpacked_mib << 20 if args.max_unpacked_mib else defaults.max_bytes,
        max_files=args.max_files or defaults.max_files, max_ratio=args.max_ratio or defaults.max_ratio)
    result = podsteps.fetch_code(args.uri, args.password_file, args.dest, sha256=args.sha256, limits=limits)
    if args.json:
        cmdline.print_json(asdict(result))
    else:
        print(f"code package unpacked: {result.files} files in {result.dest}")
    return 0


def run_fetch_data(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps

    done = podsteps.fetch_data(args.datasets, args.dest, jobs=args.jobs, record=args.record)
    if args.json:
        cmdline.print_json(done)
    else:
        for item in done:
            print(f"{item['name']}:{item['type']}:{item['version']}: {item['files']} files in {item['path']}")
        print(f"{len(done)} datasets ready under {args.dest}")
    return 0


def run_sync_output(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps

    result = podsteps.sync_output(args.src, args.name, args.type, jobs=args.jobs)
    if args.json:
        cmdline.print_json(None if result is None else {k: v for k, v in asdict(result).items() if k != "manifest"})
    elif result is None:
        print(f"no outputs in {args.src}; nothing synced")
    else:
        print(f"outputs in {result.name}:{result.type}:{result.version} ({result.files} files)"
              + (" — unchanged, no new version" if result.unchanged else ""))
    return 0


def run_fetch_checkpoint(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps

    result = podsteps.fetch_checkpoint(args.prefix, args.dest, args.message_file)
    if args.json:
        cmdline.print_json(asdict(result))
    elif result.checkpoint is None:
        print(f"no checkpoint under {args.prefix}: the trainer starts from the beginning")
    else:
        print(f"restored checkpoint {result.checkpoint} (attempt {result.attempt}'s, {result.summary}): "
              f"{result.files} files in {result.dest}")
    return 0


def run_sync_checkpoints(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps

    made = podsteps.sync_checkpoints(args.prefix, args.src, args.attempt, args.interval, until=args.until,
                                     max_bytes_per_second=args.max_bytes_per_second, rank_file=args.rank_file,
                                     staging=args.staging)
    print(f"{made} checkpoint(s) copied to {args.prefix}")
    return 0


def run_delete_checkpoints(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps

    removed = podsteps.delete_checkpoints(args.prefix)
    print(f"deleted {removed} object(s) under {args.prefix}")
    return 0


def add_commands(subparsers: Any) -> None:
    code = cmdline.subcommand(
        subparsers, "fetch-code", run_fetch_code, "download, verify, decrypt and unpack a job's code package",
        epilog="example (what every job pod's init step runs):\n"
               "  aidi fetch-code s3://aidi/codepkgs/team-a/job/<sha256>.tar.gz.enc \\\n"
               "      --password-file /var/run/aidi/code/password --dest /job/code\n\n"
               "The sha256 in the package's name (or --sha256) is checked before decrypting. Unpacking is all or\n"
               "nothing: a package with an entry that would land outside DEST (../, absolute paths, links that\n"
               "resolve outside, devices) or over a limit is refused and DEST is left as it was.\n"
               "Limits: --max-unpacked-mib (AIDI_UNPACK_MAX_MIB, default 4096), --max-files\n"
               "(AIDI_UNPACK_MAX_FILES, default 100000), --max-ratio (AIDI_UNPACK_MAX_RATIO, default 200).\n"
               + _ENV_NOTE,
    )
    code.add_argument("uri", metavar="URI", help="s3://BUCKET/KEY or file:///... of the encrypted package")
    code.add_argument("--password-file", required=True, metavar="F", help="file holding the package password")
    code.add_argument("--dest", required=True, metavar="DIR", help="folder to unpack into ($WORKING_PATH)")
    code.add_argument("--sha256", help="expected sha256 of the encrypted package (default: from its name)")
    code.add_argument("--max-unpacked-mib", type=_positive_int, metavar="MIB",
                      help="refuse a package that unpacks to more (default: AIDI_UNPACK_MAX_MIB or 4096)")
    code.add_argument("--max-files", type=_positive_int, metavar="N",
                      help="refuse a package with more entries (default: AIDI_UNPACK_MAX_FILES or 100000)")
    code.add_argument("--max-ratio", type=_positive_int, metavar="X",
                      help="refuse a package that expands more than X times (default: AIDI_UNPACK_MAX_RATIO or 200)")
    cmdline.add_json(code)

    data = cmdline.subcommand(
        subparsers, "fetch-data", run_fetch_data, "download a job's input datasets from the dataspace",
        epilog="example:\n  aidi fetch-data --dest /data_space/input adasmini_4pe:trainset:latest\n"
               "    → /data_space/input/adasmini_4pe/trainset/v3/... and .../latest → v3\n" + _ENV_NOTE,
    )
    data.add_argument("datasets", nargs="+", metavar="NAME:TYPE:VERSION", help="e.g. adasmini_4pe:trainset:latest")
    data.add_argument("--dest", required=True, metavar="DIR", help="root of the inputs (/data_space/input)")
    data.add_argument("--record", metavar="FILE",
                      help="write the job record (job, image, code sha256, the exact versions fetched) there, e.g. "
                           "/data_space/output/aidi-job.json: it travels with the outputs into model lineage")
    cmdline.add_jobs(data, default=8)
    cmdline.add_json(data)

    sync = cmdline.subcommand(
        subparsers, "sync-output", run_sync_output, "upload a job's outputs as a new dataset version",
        epilog="example:\n  aidi sync-output --src /data_space/output --name adasmini_4pe_models --type dataset\n"
               + _ENV_NOTE,
    )
    sync.add_argument("--src", required=True, metavar="DIR", help="the outputs folder (/data_space/output)")
    sync.add_argument("--name", required=True, help="output dataset name")
    sync.add_argument("--type", default="dataset", help="output dataset type (default: dataset)")
    cmdline.add_jobs(sync, default=8)
    cmdline.add_json(sync)

    prefix_help = "the job's checkpoints: checkpoints/NAMESPACE/JOB/UID/ (docs/dataspace.md, \"Checkpoints\")"
    fetch = cmdline.subcommand(
        subparsers, "fetch-checkpoint", run_fetch_checkpoint,
        "restore a job's newest complete checkpoint before its trainer starts",
        epilog="example (worker 0's init step):\n"
               "  aidi fetch-checkpoint --prefix checkpoints/team-a/adasmini-4pe/<uid>/ --dest /data_space/output \\\n"
               "      --message-file /dev/termination-log\n\n"
               "Nothing to restore is not an error: the trainer then starts from the beginning.\n" + _ENV_NOTE,
    )
    fetch.add_argument("--prefix", required=True, help=prefix_help)
    fetch.add_argument("--dest", required=True, metavar="DIR", help="the trainer's output folder (/data_space/output)")
    fetch.add_argument("--message-file", metavar="F",
                       help="write what was restored here as JSON (the pod's termination message)")
    cmdline.add_json(fetch)

    sync_ckpt = cmdline.subcommand(
        subparsers, "sync-checkpoints", run_sync_checkpoints,
        "copy a running trainer's checkpoints to the dataspace as they are written",
        epilog="example (beside the trainer in worker 0's pod):\n"
               "  aidi sync-checkpoints --prefix checkpoints/team-a/adasmini-4pe/<uid>/ --src /data_space/output \\\n"
               "      --attempt 0 --interval 600 --until /var/run/aidi/done/exit-code\n\n"
               "Copies complete files only (*.tmp skipped, *.jsonl cut after the last full line); a checkpoint is\n"
               "visible once whole. Ends after a last copy when --until exists or on SIGTERM.\n" + _ENV_NOTE,
    )
    sync_ckpt.add_argument("--prefix", required=True, help=prefix_help)
    sync_ckpt.add_argument("--src", required=True, metavar="DIR", help="the trainer's output folder")
    sync_ckpt.add_argument("--attempt", type=int, default=0,
                           help="the gang's restart count (recorded in each checkpoint)")
    sync_ckpt.add_argument("--interval", type=float, default=600.0, metavar="SECONDS",
                           help="least time between two copies (default 600; 0: every new checkpoint)")
    sync_ckpt.add_argument("--until", metavar="FILE", help="make a last copy and stop once this file exists")
    sync_ckpt.add_argument("--max-bytes-per-second", type=int, default=None, metavar="N",
                           help="upload rate limit (default: unlimited)")
    sync_ckpt.add_argument("--staging", metavar="DIR",
                           help="where new files are copied before they are sent (default: $TMPDIR or /tmp)")
    sync_ckpt.add_argument("--rank-file", metavar="FILE",
                           help="the trainer's rank: copy only while it is 0 (default: only on worker 0, "
                                "$AIDI_WORKER_INDEX)")

    delete = cmdline.subcommand(
        subparsers, "delete-checkpoints", run_delete_checkpoints, "delete a job's checkpoints from the dataspace",
        epilog="example (a failed job's checkpoints are kept until this):\n"
               "  aidi delete-checkpoints --prefix checkpoints/team-a/adasmini-4pe/<uid>/\n" + _ENV_NOTE,
    )
    delete.add_argument("--prefix", required=True, help=prefix_help)
