"""`suanli`: the client of the coordinator for enterprises and auditors."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli",
        description="Suanli client: post and follow GPU jobs, see your account, "
        "audit the public log.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('suanli')}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0
