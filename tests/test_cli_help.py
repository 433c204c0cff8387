"""The command lines users copy: each example in every CLI's `--help` (at every level) and in the shell
blocks of README.md and docs/*.md is one the CLI's parser accepts."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from aidi.cli import aidi_main, hitc, traincli

REPO = Path(__file__).resolve().parent.parent
CLIS = {"aidi": aidi_main, "hitc": hitc, "traincli": traincli}
# What the shell does after the command: comments, pipes, redirections, the next command.
SHELL_TAILS = (" #", " | ", " > ", " < ", " 2>", " && ", " || ", "; ")


def _helps(parser: argparse.ArgumentParser) -> list[str]:
    """The help text of ``parser`` and of every subcommand below it."""
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                texts += _helps(sub)
    return texts


def _commands(prog: str, text: str) -> list[str]:
    """The lines of ``text`` that run ``prog`` (a shell prompt stripped, continued lines joined)."""
    found = []
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip().removeprefix("$ ")
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if line.startswith(f"{prog} "):
            found.append(line)
    return found


def _argv(command: str) -> list[str]:
    for tail in SHELL_TAILS:
        command = command.split(tail, 1)[0]
    return shlex.split(command)[1:]


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    try:
        return getattr(parser.parse_args(argv), "func", None) is not None
    except SystemExit:
        return False


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_every_example_in_the_help_parses(prog: str) -> None:
    parser = CLIS[prog].build_parser()
    examples = [line for text in _helps(parser) for line in _commands(prog, text)]
    assert len(examples) >= 10, examples  # the helps do show examples
    bad = [line for line in examples if not _parses(parser, _argv(line))]
    assert not bad, f"examples in `{prog} --help` that do not parse: {bad}"


def test_every_command_in_the_docs_shell_blocks_parses() -> None:
    parsers = {prog: module.build_parser() for prog, module in CLIS.items()}
    commands, bad = 0, []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", doc.read_text(), re.S):
            for prog, parser in parsers.items():
                for line in _commands(prog, block):
                    if "[" in line:  # a synopsis with [optional] parts, not a command line
                        continue
                    commands += 1
                    if not _parses(parser, _argv(line)):
                        bad.append(f"{doc.name}: {line}")
    assert commands >= 40
    assert not bad, bad
