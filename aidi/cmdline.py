"""What every CLI shares: the flags that mean the same everywhere and the one ``main()`` that maps errors
to one line and an exit code (tracebacks only under ``-v``)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from aidi.api.errors import SpecError
from aidi.errors import AidiError

EXIT_INVALID_SPEC = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70

Handler = Callable[[argparse.Namespace], int]


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and full tracebacks")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_jobs(parser: argparse.ArgumentParser, default: int = 4, what: str = "parallel workers") -> None:
    parser.add_argument("-j", "--jobs", type=int, default=default, metavar="N", help=f"{what} (default: {default})")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Columns padded to their widest cell, as ``kubectl get`` prints them."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print(indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def new_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(parser)
    return parser


def subcommand(subparsers: Any, name: str, handler: Handler, help_text: str,
               description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose ``run`` is ``handler``; every subcommand also takes -v."""
    parser = subparsers.add_parser(
        name, help=help_text, description=description or help_text, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(parser)
    parser.set_defaults(func=handler)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen handler, and turn every failure into one line and an exit code."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except SpecError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID_SPEC
    except AidiError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `traincli logs JOB | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return 0
    except OSError as exc:
        advice = _ENVIRONMENT_ERRORS.get(exc.errno or 0)
        if advice is None:
            return _internal(parser, exc, verbose)
        if verbose:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{parser.prog}: error: {exc.strerror}{where}; {advice}", file=sys.stderr)
        return AidiError.exit_code
    except Exception as exc:
        return _internal(parser, exc, verbose)


# What the machine, not our code, got wrong: said as an error with what to do, not as a bug to report.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free space on that device, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free space, or write somewhere else",
    errno.EROFS: "that file system is read-only: write somewhere else",
    errno.EACCES: "check the owner and mode of that path, or use another",
    errno.EPERM: "check the owner and mode of that path, or use another",
    errno.EIO: "the device failed to read or write: check the disk or the mount",
}


def _internal(parser: argparse.ArgumentParser, exc: Exception, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"{parser.prog}: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback, "
          "and report it)", file=sys.stderr)
    return EXIT_INTERNAL
