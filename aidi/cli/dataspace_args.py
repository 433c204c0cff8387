"""The dataspace flag and opener that every `hitc` command family shares (defined once, as dvc does)."""

from __future__ import annotations

import argparse
from typing import Any


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", "--config", metavar="CONFIG",
                        help="config file (default: the AIDI_DATASPACE_* variables when set, else "
                             "~/.olympus/config.yaml, else the local folder ~/.olympus/dataspace)")


def open_from(args: argparse.Namespace) -> Any:
    """The dataspace ``-C`` names, with ``-j`` parallel transfers where the command has that flag."""
    from aidi.dataspace import DataspaceConfig, open_dataspace  # loads only when a command runs

    return open_dataspace(DataspaceConfig.load(args.config), jobs=getattr(args, "jobs", 8))
