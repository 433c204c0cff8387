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


def run_fetch_code(args: argparse.Namespace) -> int:
    from aidi.jobs import podsteps  # the dataspace client loads only when a step runs, not for `aidi --help`

    result = podsteps.fetch_code(args.uri, args.password_file, args.dest, sha256=args.sha256)
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


def add_commands(subparsers: Any) -> None:
    code = cmdline.subcommand(
        subparsers, "fetch-code", run_fetch_code, "download, verify, decrypt and unpack a job's code package",
        epilog="example (what every job pod's init step runs):\n"
               "  aidi fetch-code s3://aidi/codepkgs/team-a/job/<sha256>.tar.gz.enc \\\n"
               "      --password-file /var/run/aidi/code/password --dest /job/code\n\n"
               "The sha256 in the package's name (or --sha256) is checked before decrypting; entries that would\n"
               "land outside DEST (../, absolute paths, links out, devices) are refused.\n" + _ENV_NOTE,
    )
    code.add_argument("uri", metavar="URI", help="s3://BUCKET/KEY or file:///... of the encrypted package")
    code.add_argument("--password-file", required=True, metavar="F", help="file holding the package password")
    code.add_argument("--dest", required=True, metavar="DIR", help="folder to unpack into ($WORKING_PATH)")
    code.add_argument("--sha256", help="expected sha256 of the encrypted package (default: from its name)")
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
