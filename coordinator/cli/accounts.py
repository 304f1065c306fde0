"""`suanli-coordinator admin` tasks for accounts: providers, enterprises, auditors, tokens."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from coordinator import accounts, tlog
from coordinator.cli.change import change
from coordinator.cli.output import print_result
from coordinator.storage import Session, connect
from shared.clock import now_ms


def add_account_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    for name, what in (
        ("add-provider", "a GPU provider; prints an enrolment token"),
        ("add-enterprise", "an enterprise; prints its API token"),
    ):
        task = tasks.add_parser(name, help=f"register {what}", parents=[json_flag])
        task.add_argument("--name", required=True)
        task.add_argument(
            "--uscc", required=True, help="Unified Social Credit Code (18 characters)"
        )
        if name == "add-provider":
            task.add_argument(
                "--max-hosts",
                type=int,
                default=1,
                help="hosts the enrolment token may enrol (default 1)",
            )
        task.set_defaults(run=cmd_add_provider if name == "add-provider" else cmd_add_enterprise)
    auditor = tasks.add_parser(
        "add-auditor", help="register an auditor; prints a read-only token", parents=[json_flag]
    )
    auditor.add_argument("--name", required=True)
    auditor.set_defaults(run=cmd_add_auditor)
    enrolment = tasks.add_parser(
        "enrolment-token", parents=[json_flag], help="issue another enrolment token to a provider"
    )
    enrolment.add_argument("--provider", required=True, help="provider id")
    enrolment.add_argument("--max-hosts", type=int, default=1)
    enrolment.add_argument("--expires-days", type=int, help="token lifetime in days")
    enrolment.set_defaults(run=cmd_enrolment_token)
    listing = tasks.add_parser(
        "list", help="list providers, enterprises and auditors", parents=[json_flag]
    )
    listing.set_defaults(run=cmd_list)


def add_token_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    revoke_token = tasks.add_parser(
        "revoke-token",
        parents=[json_flag],
        help="revoke an API or enrolment token (the server stops accepting it within a second)",
    )
    which = revoke_token.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="the token itself")
    which.add_argument("--subject", help="every token of this enterprise, auditor or provider id")
    revoke_token.set_defaults(run=cmd_revoke_token)


def cmd_add_provider(args: argparse.Namespace) -> int:
    return _register(
        args,
        lambda db: accounts.add_provider(db, args.name, args.uscc, now_ms(), args.max_hosts),
        ("provider_id", "enrolment_token"),
        "provider {id}\nenrolment token (shown once): {token}",
    )


def cmd_add_enterprise(args: argparse.Namespace) -> int:
    def register(db: Session) -> tuple[str, str]:
        enterprise = accounts.add_enterprise(db, args.name, args.uscc, now_ms())
        tlog.log_registrations(db)
        return enterprise

    return _register(
        args,
        register,
        ("enterprise_id", "token"),
        "enterprise {id}\nAPI token (shown once): {token}",
    )


def cmd_add_auditor(args: argparse.Namespace) -> int:
    return _register(
        args,
        lambda db: accounts.add_auditor(db, args.name, now_ms()),
        ("auditor_id", "token"),
        "auditor {id}\nread-only token (shown once): {token}",
    )


def _register(
    args: argparse.Namespace,
    register: Callable[[Session], tuple[str, str]],
    keys: tuple[str, str],
    text: str,
) -> int:
    """Register one account in one transaction, then show its id and its token (once), under
    `keys` for --json and as `text` otherwise."""
    account_id, token = change(args, register)
    id_key, token_key = keys
    print_result(
        args, {id_key: account_id, token_key: token}, text.format(id=account_id, token=token)
    )
    return 0


def cmd_enrolment_token(args: argparse.Namespace) -> int:
    def issue(db: Session) -> str:
        now = now_ms()
        expires = None if args.expires_days is None else now + args.expires_days * 86_400_000
        return accounts.issue_enrolment_token(db, args.provider, now, args.max_hosts, expires)

    token = change(args, issue)
    print_result(
        args,
        {"provider_id": args.provider, "enrolment_token": token},
        f"enrolment token for {args.provider} (shown once): {token}",
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    listing = accounts.list_accounts(connect(args.db))
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind, rows in listing.items():
        table = Table(title=kind)
        columns = [c for c in (rows[0].keys() if rows else ["id", "name"]) if c != "created_at_ms"]
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in columns))
        console.print(table)
    return 0


def cmd_revoke_token(args: argparse.Namespace) -> int:
    hashes = change(
        args,
        lambda db: accounts.revoke_tokens(db, now_ms(), token=args.token, subject_id=args.subject),
    )
    print_result(args, {"revoked_token_hashes": hashes}, f"{len(hashes)} token(s) revoked")
    return 0
