"""`suanli audit verify|replay-auctions|receipt`: the argparse wiring and `main`, which runs a
command and prints its report (JSON with `--json`).

Exit status: 0 everything verified; 1 the coordinator could not be reached or refused;
2 the command line, the state file or a key is wrong; 3 discrepancies were found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from coordinator.client.audit.errors import AuditError, AuditUsageError
from coordinator.client.audit.receipt import check_receipt
from coordinator.client.audit.render import render_report
from coordinator.client.audit.reports import AuditReport, ReceiptReport
from coordinator.client.audit.verify import replay_auctions, verify_log
from shared.coordinator_urls import TransportError, parse_coordinator_urls
from shared.http_client import CoordinatorError

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_DISCREPANCY = 3

Options = Callable[..., None]


def add_commands(commands: Any, connection_options: Options) -> None:
    """Add `suanli audit verify|replay-auctions|receipt` to the CLI's subcommands.

    `connection_options(parser, top=False)` is the CLI's own (--coordinator, --ca-file, --json).
    Each leaf sets `audit` to its coroutine; `main` runs it.
    """
    audit = commands.add_parser(
        "audit",
        help="verify the coordinator's transparency log without trusting it",
        description="Re-verify the coordinator's transparency log: signed checkpoints, "
        "consistency with the previous run, every receipt and posting, every auction.",
    )
    audit.set_defaults(help_parser=audit)
    connection_options(audit, top=False)
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION")

    def leaf(
        name: str, run: Callable[..., Awaitable[AuditReport | ReceiptReport]], help_text: str
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        connection_options(parser, top=False)
        parser.add_argument(
            "--log-key",
            metavar="VKEY",
            help="the log's verifier key (name+hash+key); default: the key "
            "pinned in --state, else the coordinator's own, trusted on first use",
        )
        parser.set_defaults(run=run, audit=run)
        return parser

    verify = leaf(
        "verify", _cmd_verify, "verify the whole log and every receipt, posting and auction in it"
    )
    verify.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="where the pinned key and the last verified checkpoint are kept; "
        "the log must extend that checkpoint",
    )
    leaf("replay-auctions", _cmd_replay, "replay every auction round of the log")
    receipt = leaf("receipt", _cmd_receipt, "prove that one receipt is in the log")
    receipt.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="the receipt envelope, as the agent signed it (raw bytes)",
    )
    receipt.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="a state file of `audit verify` whose pinned key to use",
    )
    receipt.add_argument(
        "--acknowledgement",
        metavar="FILE",
        type=Path,
        help="the coordinator's acknowledgement of the receipt's batch (raw "
        "bytes, as the agent's spool keeps it) to check as well",
    )


def _progress(args: argparse.Namespace) -> Progress | None:
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


async def _cmd_verify(args: argparse.Namespace, url: str, ca_file: str | None) -> AuditReport:
    progress = _progress(args)
    token = getattr(args, "token", None) or os.environ.get("SUANLI_TOKEN")
    if progress is None:
        return await verify_log(url, args.log_key, args.state, None, ca_file=ca_file, token=token)
    with progress:
        return await verify_log(
            url, args.log_key, args.state, progress, ca_file=ca_file, token=token
        )


async def _cmd_replay(args: argparse.Namespace, url: str, ca_file: str | None) -> AuditReport:
    progress = _progress(args)
    if progress is None:
        return await replay_auctions(url, args.log_key, None, ca_file=ca_file)
    with progress:
        return await replay_auctions(url, args.log_key, progress, ca_file=ca_file)


async def _cmd_receipt(args: argparse.Namespace, url: str, ca_file: str | None) -> ReceiptReport:
    try:
        envelope = args.file.read_bytes()
        acknowledgement = args.acknowledgement.read_bytes() if args.acknowledgement else None
    except OSError as exc:
        raise AuditUsageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    return await check_receipt(
        url, envelope, args.log_key, args.state, ca_file=ca_file, acknowledgement=acknowledgement
    )


def main(args: argparse.Namespace, url: str | None, ca_file: str | None = None) -> int:
    """Run the `audit` command in `args.audit`; returns the exit status."""
    if url is None:
        return _fail(
            "no coordinator given; pass --coordinator URL or set SUANLI_COORDINATOR", EXIT_USAGE
        )
    try:
        urls = ",".join(parse_coordinator_urls(url))  # refused here, before anything runs
        report = asyncio.run(args.audit(args, urls, ca_file))
    except (AuditUsageError, TransportError) as exc:
        return _fail(exc.detail, EXIT_USAGE)
    except (AuditError, CoordinatorError) as exc:
        return _fail(exc.detail, EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        render_report(report, Console())
    return EXIT_OK if report.ok else EXIT_DISCREPANCY


def _fail(message: str, status: int) -> int:
    print(f"suanli: {message}", file=sys.stderr)
    return status
