"""`aidi`: the platform's toolbox — sample data, packing, pod-side fetch steps, and the CRD generator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aidi import __version__, cmdline
from aidi.cli import appkey_cmd, console_cmd, eval_cmd, pack_cmd, podsteps_cmd, predict_cmd

DESCRIPTION = """\
The AIDI toolbox. Packing, prediction and evaluation run here; datasets go up with `hitc`, jobs
with `traincli`.
"""

# Command families, one module each under aidi/cli/ (`<family>_cmd.py`); each has `add_commands(subparsers)`.
COMMAND_MODULES = [eval_cmd, pack_cmd, podsteps_cmd, predict_cmd, console_cmd, appkey_cmd]


def run_crd(args: argparse.Namespace) -> int:
    from aidi.api import crd

    argv = ["--check", args.check] if args.check else (["-o", args.output] if args.output else [])
    return crd.main(argv)


def run_version(args: argparse.Namespace) -> int:
    print(f"aidi {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cmdline.new_parser("aidi", DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"aidi {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    gen = cmdline.subcommand(sub, "crd", run_crd, "print, write or check the TrainJob CRD generated from the schema",
                            epilog="regenerate after editing aidi/api/trainjob.py:\n"
                                   "  aidi crd -o crds/trainjobs.aidi.io.yaml")
    group = gen.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", help="write to this file instead of stdout")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE has drifted from the schema")
    cmdline.subcommand(sub, "version", run_version, "print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
