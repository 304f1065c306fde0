"""The market and the money: capacity and asks, a token's account, the public voucher pool and
the ledger balances auditors compare with the log."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coordinator import billing
from coordinator.errors import Forbidden
from coordinator.http.keys import COORDINATOR, Handler
from coordinator.http.openapi import Route
from coordinator.http.tokens import principal
from shared import ledger_names
from shared.messages import api

AUDITED_ACCOUNTS = tuple(
    ledger_names.name_pattern(kind)
    for kind in (
        ledger_names.RECEIVABLE,
        ledger_names.EARNINGS,
        ledger_names.POOL,
        ledger_names.CAP,
    )
)


async def market(request: web.Request) -> web.Response:
    await principal(request)
    return web.json_response(request.app[COORDINATOR].state.market.summary())


async def account(request: web.Request) -> web.Response:
    who = await principal(request)
    coordinator = request.app[COORDINATOR]
    body: dict[str, Any] = {"role": who.role, "id": who.subject_id}
    if who.role == "enterprise":
        now = coordinator.clock()
        body.update(
            await coordinator.database.run(
                lambda db: coordinator.enterprises.account(db, who.subject_id, now)
            )
        )
    return web.json_response(body)


async def ledger_balances(request: web.Request) -> web.Response:
    """Balances an auditor compares with the log, read in one transaction with the log's size."""
    who = await principal(request)
    if who.role != "auditor":
        raise Forbidden("ledger balances are for auditors")

    def read(db: Any) -> dict[str, Any]:
        size = db.conn.execute("SELECT size FROM log_meta WHERE id = 1").fetchone()[0]
        where = " OR ".join("id LIKE ?" for _ in AUDITED_ACCOUNTS)
        rows = db.conn.execute(
            "SELECT id, debits_posted, credits_posted FROM ledger_accounts"
            f" WHERE {where} ORDER BY id",
            AUDITED_ACCOUNTS,
        ).fetchall()
        return {
            "log_size": size,
            "accounts": [
                {"id": row[0], "debits_posted": row[1], "credits_posted": row[2]} for row in rows
            ],
        }

    return web.json_response(await request.app[COORDINATOR].database.run(read))


async def voucher_pool(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    pool = await coordinator.database.run(lambda db: billing.pool_status(db, coordinator.policy))
    return web.json_response({"fiscal_year": coordinator.policy.fiscal_year, **pool})


ROUTES: list[tuple[Route, Handler]] = [
    (
        Route(
            "GET",
            "/v1/market",
            None,
            api.Market,
            "Capacity by GPU model, asks and the pool in PFLOPS",
        ),
        market,
    ),
    (
        Route(
            "GET",
            "/v1/account",
            None,
            api.Account,
            "Who this token is; for an enterprise also its voucher entitlement, credit, "
            "reservations and statements",
        ),
        account,
    ),
    (
        Route(
            "GET",
            "/v1/vouchers/pool",
            None,
            api.VoucherPool,
            "The year's public voucher pool: granted, used, remaining (no token)",
            "public",
        ),
        voucher_pool,
    ),
    (
        Route(
            "GET",
            "/v1/ledger/balances",
            None,
            api.LedgerBalances,
            "Posted balances of the receivable, earnings, pool and cap accounts with the log "
            "size they belong to (auditors), to compare with the log's postings",
        ),
        ledger_balances,
    ),
]
