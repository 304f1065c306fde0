"""`suanli-coordinator admin` tasks for billing: the ledger's check, closing a period,
payments, credit limits, statements, provider earnings and the voucher pool."""

from __future__ import annotations

import argparse
import json
from typing import Any

from coordinator import billing, tlog
from coordinator.billing import VoucherPolicy, load_voucher_policy
from coordinator.cli.output import print_result
from coordinator.storage import connect, transaction
from shared import log_entries
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.money import format_money, parse_yuan


def add_billing_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
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


def _ledger_db(args: argparse.Namespace) -> tuple[Any, VoucherPolicy, int]:
    policy = load_voucher_policy(args.config)
    db = connect(args.db)
    now = now_ms()
    with transaction(db):
        billing.open_fiscal_year(db, policy, now)
    return db, policy, now


def _enterprise_ready(db: Any, enterprise_id: str, policy: VoucherPolicy, now: int) -> None:
    row = db.conn.execute("SELECT uscc FROM enterprises WHERE id = ?", [enterprise_id]).fetchone()
    if row is None:
        raise SuanliError(f"no enterprise {enterprise_id}")
    billing.open_enterprise_accounts(db, enterprise_id, row[0], policy, now)


def cmd_check_ledger(args: argparse.Namespace) -> int:
    problems = billing.check_invariants(connect(args.db))
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
        closed = billing.close_period(db, args.period, policy, now, early=args.early)
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
    print_result(args, data, f"period {args.period} closed: {len(data['statements'])} statements")
    return 0


def cmd_record_payment(args: argparse.Namespace) -> int:
    db, policy, now = _ledger_db(args)
    amount = parse_yuan(args.amount, field="--amount")
    with transaction(db):
        _enterprise_ready(db, args.enterprise, policy, now)
        payment = billing.record_payment(db, args.enterprise, amount, args.reference, now)
        tlog.append_unless_logged(db, _payment_entry(db, payment))
    print_result(
        args,
        payment.to_dict(),
        f"payment {args.reference} of {format_money(amount)} recorded for {args.enterprise}",
    )
    return 0


def _payment_entry(db: Any, payment: billing.Payment) -> bytes:
    transfers = billing.get_transfers(db, payment.transfer_ids)
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
        billing.set_credit_limit(db, args.enterprise, amount, now)
    print_result(
        args,
        {"enterprise_id": args.enterprise, "credit_limit_micro_yuan": amount},
        f"credit limit of {args.enterprise} is now {format_money(amount)}",
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
    listing = {enterprise: billing.enterprise_statements(db, enterprise, now) for enterprise in ids}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for enterprise, items in listing.items():
        for item in items:
            print(
                f"{enterprise} {item['period']}: {format_money(item['deferred_micro_yuan'])} due "
                f"{item['due_date']}, outstanding {format_money(item['outstanding_micro_yuan'])}, "
                f"{item['status']}"
            )
    return 0


def cmd_provider_earnings(args: argparse.Namespace) -> int:
    earned = billing.provider_earnings(connect(args.db), args.provider)
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
    pool = billing.pool_status(db, policy)
    print_result(
        args,
        {"fiscal_year": policy.fiscal_year, **pool},
        "\n".join(f"{key}: {format_money(value)}" for key, value in pool.items()),
    )
    return 0
