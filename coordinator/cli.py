"""`suanli-coordinator`: serve the market and administer its database."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli-coordinator",
        description="Suanli coordinator: auctions jobs to agents, verifies signed receipts, "
        "debits vouchers and publishes a transparency log.",
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
