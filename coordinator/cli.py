"""`suanli-coordinator`: serve the market and administer its database."""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator import accounts, ledger, tlog, vouchers
from coordinator.app import log_key_path, make_app
from coordinator.config import Settings, load_settings
from coordinator.storage import connect, transaction
from coordinator.vouchers import VoucherPolicy, load_voucher_policy
from shared import log_entries
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.money import format_yuan, parse_yuan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli-coordinator",
        description="Suanli coordinator: auctions jobs to agents, verifies signed receipts, "
        "debits vouchers and publishes a transparency log.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('suanli')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the coordinator service",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--db", required=True, type=Path, help="SQLite database file")
    serve.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:8420)")
    serve.add_argument("--config", type=Path, help="coordinator.toml")
    serve.add_argument("--tls-cert", help="PEM certificate chain; serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.set_defaults(run=cmd_serve)

    admin = commands.add_parser("admin", help="manage accounts in the database")
    admin.add_argument("--db", required=True, type=Path, help="SQLite database file")
    admin.add_argument("--json", action="store_true", help="machine-readable output")
    admin.add_argument("--config", type=Path, help="coordinator.toml (its [vouchers] policy)")
    tasks = admin.add_subparsers(dest="task", metavar="TASK", required=True)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
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
    check = tasks.add_parser(
        "check-ledger",
        parents=[json_flag],
        help="recompute every balance and limit; exit 1 naming each problem",
    )
    check.set_defaults(run=cmd_check_ledger)
    close = tasks.add_parser(
        "close-period",
        parents=[json_flag],
        help="close a month: statements for enterprises, earnings for providers",
    )
    close.add_argument("period", help="YYYY-MM")
    close.add_argument(
        "--early",
        action="store_true",
        help="close before the month has ended (later usage in it is then refused)",
    )
    close.set_defaults(run=cmd_close_period)
    payment = tasks.add_parser(
        "record-payment",
        parents=[json_flag],
        help="record an enterprise's payment (idempotent by reference)",
    )
    payment.add_argument("--enterprise", required=True, help="enterprise id")
    payment.add_argument("--amount", required=True, help="yuan, e.g. 1250.00")
    payment.add_argument("--reference", required=True, help="bank reference; a repeat is a no-op")
    payment.set_defaults(run=cmd_record_payment)
    credit = tasks.add_parser(
        "set-credit-limit", parents=[json_flag], help="set how much an enterprise may owe"
    )
    credit.add_argument("--enterprise", required=True)
    credit.add_argument("--amount", required=True, help="yuan")
    credit.set_defaults(run=cmd_set_credit_limit)
    statements = tasks.add_parser(
        "statements", parents=[json_flag], help="enterprises' statements with due dates and status"
    )
    statements.add_argument("--enterprise", help="only this enterprise")
    statements.set_defaults(run=cmd_statements)
    earnings = tasks.add_parser(
        "provider-earnings", parents=[json_flag], help="what a provider earned and was paid"
    )
    earnings.add_argument("--provider", required=True)
    earnings.set_defaults(run=cmd_provider_earnings)
    pool = tasks.add_parser(
        "pool", parents=[json_flag], help="the voucher pool: granted, used, remaining"
    )
    pool.set_defaults(run=cmd_pool)
    flags = tasks.add_parser(
        "flags",
        parents=[json_flag],
        help="capacity flags (UUID conflicts, changed or vanished GPUs)",
    )
    flags.add_argument("--all", action="store_true", help="cleared flags too")
    flags.add_argument("--agent", help="only this agent's")
    flags.set_defaults(run=cmd_flags)
    clear = tasks.add_parser(
        "clear-flag",
        parents=[json_flag],
        help="clear a flag: the GPU is believed as now reported (a claim "
        "becomes the holding, a vanished GPU is forgotten)",
    )
    clear.add_argument("flag_id", type=int, metavar="ID", help="flag id, from `flags`")
    clear.set_defaults(run=cmd_clear_flag)
    revoke_token = tasks.add_parser(
        "revoke-token",
        parents=[json_flag],
        help="revoke an API or enrolment token (the server stops accepting it within a second)",
    )
    which = revoke_token.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="the token itself")
    which.add_argument("--subject", help="every token of this enterprise, auditor or provider id")
    revoke_token.set_defaults(run=cmd_revoke_token)
    revoke_agent = tasks.add_parser(
        "revoke-agent",
        parents=[json_flag],
        help="revoke an agent's key: its requests are refused, its GPUs "
        "leave the market and its leases end as lost",
    )
    revoke_agent.add_argument("agent_id", metavar="AGENT_ID")
    revoke_agent.set_defaults(run=cmd_revoke_agent)
    rotate = tasks.add_parser(
        "rotate-log-key",
        parents=[json_flag],
        help="make a new log key, signed over by the old one in the log (the "
        "server switches within a second; the old key is kept)",
    )
    rotate.set_defaults(run=cmd_rotate_log_key)
    return parser


def _settings_help() -> str:
    lines = ["settings (coordinator.toml, [coordinator] table):"]
    for name, default, help in Settings.describe():
        lines.append(f"  {name} = {default!r}\n      {help}")
    lines.append("\nvoucher policy (coordinator.toml, [vouchers] table):")
    for name, default, help in VoucherPolicy.describe():
        lines.append(f"  {name} = {default!r}\n      {help}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config).with_overrides(
        listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    policy = load_voucher_policy(args.config)
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SuanliError(f"--listen {settings.listen!r} must be HOST:PORT")
    ssl_context = None
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise SuanliError("HTTPS needs both --tls-cert and --tls-key")
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(settings.tls_cert, settings.tls_key)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving plain HTTP on %s: agents and clients will refuse to send credentials "
            "to it; give --tls-cert and --tls-key",
            host,
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = make_app(settings, str(args.db), policy=policy)
    web.run_app(
        app,
        host=host.strip("[]"),
        port=int(port),
        ssl_context=ssl_context,
        print=lambda text: print(text, flush=True),
        access_log=None,
        # a connection gets this long for each request head (the slow-loris bound)
        keepalive_timeout=settings.header_timeout_s,
    )
    return 0


def _print(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def cmd_add_provider(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        provider_id, token = accounts.add_provider(
            db, args.name, args.uscc, now_ms(), args.max_hosts
        )
    _print(
        args,
        {"provider_id": provider_id, "enrolment_token": token},
        f"provider {provider_id}\nenrolment token (shown once): {token}",
    )
    return 0


def cmd_add_enterprise(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        enterprise_id, token = accounts.add_enterprise(db, args.name, args.uscc, now_ms())
        tlog.log_registrations(db)
    _print(
        args,
        {"enterprise_id": enterprise_id, "token": token},
        f"enterprise {enterprise_id}\nAPI token (shown once): {token}",
    )
    return 0


def cmd_add_auditor(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        auditor_id, token = accounts.add_auditor(db, args.name, now_ms())
    _print(
        args,
        {"auditor_id": auditor_id, "token": token},
        f"auditor {auditor_id}\nread-only token (shown once): {token}",
    )
    return 0


def cmd_enrolment_token(args: argparse.Namespace) -> int:
    db = connect(args.db)
    now = now_ms()
    expires = None if args.expires_days is None else now + args.expires_days * 86_400_000
    with transaction(db):
        token = accounts.issue_enrolment_token(db, args.provider, now, args.max_hosts, expires)
    _print(
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


def _ledger_db(args: argparse.Namespace) -> tuple[Any, VoucherPolicy, int]:
    policy = load_voucher_policy(args.config)
    db = connect(args.db)
    now = now_ms()
    with transaction(db):
        vouchers.open_fiscal_year(db, policy, now)
    return db, policy, now


def _enterprise_ready(db: Any, enterprise_id: str, policy: VoucherPolicy, now: int) -> None:
    row = db.conn.execute("SELECT uscc FROM enterprises WHERE id = ?", [enterprise_id]).fetchone()
    if row is None:
        raise SuanliError(f"no enterprise {enterprise_id}")
    vouchers.open_enterprise_accounts(db, enterprise_id, row[0], policy, now)


def cmd_check_ledger(args: argparse.Namespace) -> int:
    problems = ledger.check_invariants(connect(args.db))
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
    else:
        print("ledger ok: every balance, limit and usage transfer checks out")
    return 1 if problems else 0


def cmd_close_period(args: argparse.Namespace) -> int:
    db, policy, now = _ledger_db(args)
    with transaction(db):
        closed = vouchers.close_period(db, args.period, policy, now, early=args.early)
        statements = tuple(
            log_entries.Statement(
                s.party_kind, s.party_id, s.total, s.voucher, s.deferred, s.due_at_ms
            )
            for s in closed.statements
        )
        tlog.append_unless_logged(
            db,
            log_entries.encode_entry(
                log_entries.PERIOD_CLOSE,
                closed.closed_at_ms,
                log_entries.PeriodCloseEntry(closed.period, statements),
            ),
        )
    data = closed.to_dict()
    _print(args, data, f"period {args.period} closed: {len(data['statements'])} statements")
    return 0


def cmd_record_payment(args: argparse.Namespace) -> int:
    db, policy, now = _ledger_db(args)
    amount = parse_yuan(args.amount, field="--amount")
    with transaction(db):
        _enterprise_ready(db, args.enterprise, policy, now)
        payment = vouchers.record_payment(db, args.enterprise, amount, args.reference, now)
        tlog.append_unless_logged(db, _payment_entry(db, payment))
    _print(
        args,
        payment.to_dict(),
        f"payment {args.reference} of ¥{format_yuan(amount)} recorded for {args.enterprise}",
    )
    return 0


def _payment_entry(db: Any, payment: vouchers.Payment) -> bytes:
    transfers = ledger.get_transfers(db, payment.transfer_ids)
    postings = tuple(
        log_entries.Posting(t.id, t.debit_account, t.credit_account, t.amount, t.code)
        for t in (transfers[i] for i in payment.transfer_ids)
    )
    return log_entries.encode_entry(
        log_entries.PAYMENT,
        payment.at_ms,
        log_entries.PaymentEntry(payment.reference, payment.party_id, payment.amount, postings),
    )


def cmd_set_credit_limit(args: argparse.Namespace) -> int:
    db, policy, now = _ledger_db(args)
    amount = parse_yuan(args.amount, field="--amount")
    with transaction(db):
        _enterprise_ready(db, args.enterprise, policy, now)
        vouchers.set_credit_limit(db, args.enterprise, amount, now)
    _print(
        args,
        {"enterprise_id": args.enterprise, "credit_limit_micro_yuan": amount},
        f"credit limit of {args.enterprise} is now ¥{format_yuan(amount)}",
    )
    return 0


def cmd_statements(args: argparse.Namespace) -> int:
    db, _policy, now = _ledger_db(args)
    ids = (
        [args.enterprise]
        if args.enterprise
        else [
            row[0]
            for row in db.conn.execute("SELECT enterprise_id FROM ledger_enterprises ORDER BY 1")
        ]
    )
    listing = {
        enterprise: vouchers.enterprise_statements(db, enterprise, now) for enterprise in ids
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for enterprise, items in listing.items():
        for item in items:
            print(
                f"{enterprise} {item['period']}: ¥{format_yuan(item['deferred_micro_yuan'])} due "
                f"{item['due_date']}, outstanding ¥{format_yuan(item['outstanding_micro_yuan'])}, "
                f"{item['status']}"
            )
    return 0


def cmd_provider_earnings(args: argparse.Namespace) -> int:
    earned = vouchers.provider_earnings(connect(args.db), args.provider)
    print(
        json.dumps(earned, indent=2)
        if args.json
        else "\n".join(
            f"{key}: {value}" for key, value in earned.items() if not isinstance(value, list)
        )
    )
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    db, policy, _now = _ledger_db(args)
    pool = vouchers.pool_status(db, policy)
    _print(
        args,
        {"fiscal_year": policy.fiscal_year, **pool},
        "\n".join(f"{key}: ¥{format_yuan(value)}" for key, value in pool.items()),
    )
    return 0


def cmd_flags(args: argparse.Namespace) -> int:
    rows = accounts.list_flags(connect(args.db), include_cleared=args.all, agent_id=args.agent)
    if args.json:
        print(json.dumps({"flags": rows}, indent=2))
    elif not rows:
        print("no open capacity flags" if not args.all else "no capacity flags")
    else:
        for row in rows:
            state = "open" if row["cleared_at_ms"] is None else "cleared"
            print(
                f"{row['id']} {state} {row['kind']} agent {row['agent_id']} GPU {row['gpu_uuid']}: "
                f"{row['detail']}"
            )
    return 0


def cmd_clear_flag(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        flag = accounts.clear_flag(db, args.flag_id, now_ms())
    _print(args, flag, f"flag {flag['id']} ({flag['kind']} on {flag['gpu_uuid']}) cleared")
    return 0


def cmd_revoke_token(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        hashes = accounts.revoke_tokens(db, now_ms(), token=args.token, subject_id=args.subject)
    _print(args, {"revoked_token_hashes": hashes}, f"{len(hashes)} token(s) revoked")
    return 0


def cmd_revoke_agent(args: argparse.Namespace) -> int:
    db = connect(args.db)
    with transaction(db):
        revoked = accounts.revoke_agent(db, args.agent_id, now_ms())
    _print(args, revoked, f"agent {args.agent_id} revoked")
    return 0


def cmd_rotate_log_key(args: argparse.Namespace) -> int:
    rotated = tlog.rotate_log_key(connect(args.db), log_key_path(args.db), now_ms())
    _print(
        args,
        rotated,
        f"log key rotated at entry {rotated['log_index']}\n"
        f"new log key: {rotated['new_log_key']}\nold key kept in {rotated['archived_key']}",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (SuanliError, ValueError) as exc:
        print(f"suanli-coordinator: {exc}", file=sys.stderr)
        return 1
