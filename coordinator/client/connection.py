"""The flags every `suanli` command takes: where the coordinator is, which token and CA file
to use (each also from its environment variable, else from a `suanli login` profile), and
`--json`."""

from __future__ import annotations

import argparse
from typing import Any


def connection_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Below a subcommand the defaults are suppressed so that they never overwrite what
    # was given before it: `suanli --json job show ID` and `suanli job show ID --json`.
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--coordinator",
        metavar="URL",
        default=default,
        help="the coordinator, https://host[:port], or the leader and its standbys separated "
        "by commas (env SUANLI_COORDINATOR)",
    )
    group.add_argument(
        "--token",
        metavar="T",
        default=default,
        help="your API token (env SUANLI_TOKEN, which keeps it out of the process list)",
    )
    group.add_argument(
        "--ca-file",
        metavar="PATH",
        default=default,
        help="CA certificate(s) to verify the coordinator with (env SUANLI_CA_FILE)",
    )
    group.add_argument(
        "--profile",
        metavar="NAME",
        default=default,
        help="the profile of `suanli login` to use for what no flag or env gives "
        "(env SUANLI_PROFILE; default: default)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print machine-readable JSON only",
    )
