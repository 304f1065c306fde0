"""What every Suanli command line shares: the top parser (its name, its description and
`--version`, the installed suanli's), and running the chosen command with its errors shown as
one sentence."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version


def top_parser(
    prog: str,
    description: str,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = parser_class(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('suanli')}")
    return parser


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...],
    prepare: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse `argv`, let `prepare` complete the arguments (from a settings file, say), and run
    the chosen command (its `run` default). With no command, the help and exit 2; one of
    `errors` becomes one line on stderr, `<prog>: <sentence>`, and exit 1."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if prepare is not None:
            prepare(args)
        return int(run(args))
    except errors as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
