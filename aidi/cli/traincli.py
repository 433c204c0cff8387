"""`traincli`: check, submit, follow and cancel training jobs (AIDI's cluster CLI)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from aidi.api.loader import load_file
from aidi.cli import common

DESCRIPTION = """\
Submit and follow training jobs on a GPU cluster (or on this machine with a `local` cluster).

A job file is either AIDI's train_job.yaml (REQUIRED / OPTIONAL sections) or a TrainJob custom
resource (apiVersion: aidi.io/v1alpha1); see docs/trainjob.md.
"""

EPILOG = """\
examples:
  traincli validate -f examples/train_job.yaml -o yaml
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


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("traincli", DESCRIPTION, EPILOG)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    validate = common.subcommand(
        sub, "validate", run_validate, "check a job file and print the TrainJob it would submit",
        epilog="exit codes: 0 valid, 2 invalid (every problem is listed with its field and fix)",
    )
    validate.add_argument("-f", "--file", required=True, help="train_job.yaml or a TrainJob manifest")
    validate.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                          help="format of the printed TrainJob (default: yaml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
