"""Attack: more jobs accepted against one enterprise's credit than the ledger can pay.

Three jobs were accepted against one credit limit, each counting on the same remaining voucher
cap; billed within their own maxima, the third's receipts were refused `credit_exceeded` and its
provider went unpaid. Now every reservation holds, at acceptance, its voucher share on the cap
and the pool and the rest on credit, so the third job is refused at submission with a sentence,
and the jobs that were accepted are paid in full.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from coordinator_harness import (
    FAST_SETTINGS,
    Api,
    CoordinatorProcess,
    FakeAgent,
    lease_receipt,
    uscc,
)
from databases import new_database

from shared.ledger_names import earnings_account
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt

PRICE = 3_600_000_000  # µ¥ per GPU-hour: one yuan per GPU-second
DURATION_S = 4
MAX_COST = usage_amount(DURATION_S * 1000, PRICE)  # ¥4 per one-GPU job
BILLED_MS = 3_000  # each job bills well within its maximum (and its billable window)
CAP = MAX_COST // 2  # the company's voucher cap: one job's 50% share
CREDIT = 3 * (MAX_COST - CAP)  # what the old reservations took for three jobs


def _config(workdir: Path) -> Path:
    path = workdir / "attack.toml"
    path.write_text(
        "[coordinator]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in FAST_SETTINGS.items())
        + f"log_key_file = {json.dumps(str(workdir / 'coordinator.key'))}\n"
        + "\n[vouchers]\n"
        f"coverage_bps = 5000\nper_company_cap_micro_yuan = {CAP}\n"
        f"default_credit_limit_micro_yuan = {CREDIT}\n"
    )
    return path


async def _leases(agent: FakeAgent, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    leases: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        leases = await agent.leases(wait_ms=500)
        if len(leases) >= count:
            return leases
    raise AssertionError(f"{count} leases never arrived: {leases}")


async def test_three_jobs_on_one_credit_limit_the_third_is_refused_at_submission(
    tmp_path: Path, engine_name: str, cleanup: list[Any]
) -> None:
    config = _config(tmp_path)
    coordinator = CoordinatorProcess(
        tmp_path, extra_args=["--config", str(config)], database=new_database(engine_name, tmp_path)
    ).start()
    try:
        await _attack(coordinator, config, cleanup)
    finally:
        coordinator.stop()


async def _attack(coordinator: CoordinatorProcess, config: Path, cleanup: list[Any]) -> None:
    agent = FakeAgent(coordinator.url, ["GPU-t0", "GPU-t1", "GPU-t2"], PRICE)
    cleanup.append(agent)
    provider = coordinator.admin_json(
        "--config", str(config), "add-provider", "--name", "DC", "--uscc", uscc(71)
    )
    await agent.enrol(provider["enrolment_token"])
    await agent.heartbeat()
    agent.keep_alive()
    enterprise = coordinator.admin_json(
        "--config", str(config), "add-enterprise", "--name", "Buyer", "--uscc", uscc(72)
    )
    api = Api(coordinator.url, enterprise["token"])
    cleanup.append(api)

    job = {"gpus": 1, "max_duration_s": DURATION_S, "max_price_per_gpu_hour_micro_yuan": PRICE}
    first = await api.submit(**job, idempotency_key="job-1")
    second = await api.submit(**job, idempotency_key="job-2")
    assert (first[0], second[0]) == (201, 201), (first, second)
    # the first job holds ¥2 of voucher on the cap (all of it) and ¥2 of credit; the second
    # finds the cap held, so it holds its whole ¥4 on credit: the ¥6 limit is taken
    status, third = await api.submit(**job, idempotency_key="job-3")
    assert status == 402, third
    assert third["error"] == "credit_exceeded"
    assert "reservation" in third["detail"] and "does not fit the credit" in third["detail"]
    assert "free ¥0.00" in third["detail"]
    _, account = await api.call("GET", "/v1/account")
    assert account["reserved_micro_yuan"] == CREDIT
    assert account["voucher"]["held_micro_yuan"] == CAP
    assert [r["voucher_held_micro_yuan"] for r in account["reservations"]] == [CAP, 0]
    listed = await api.call("GET", "/v1/jobs")
    assert len(listed[1]["jobs"] if isinstance(listed[1], dict) else listed[1]) == 2

    # both accepted jobs bill well within their maxima, and every receipt is paid
    leases = await _leases(agent, 2)
    for lease in leases:
        await agent.client.status(lease["lease_id"], "started")
    await asyncio.sleep(BILLED_MS / 1000 + 0.3)
    sealed = [lease_receipt(agent, lease, BILLED_MS, price=PRICE) for lease in leases]
    answer = await agent.client.signed(
        "/v1/agent/receipts", {"receipts": [s.envelope for s in sealed]}
    )
    assert [r["status"] for r in answer["results"]] == ["accepted", "accepted"], answer
    charged = usage_amount(BILLED_MS, PRICE)
    jobs = [await api.job(first[1]["id"]), await api.job(second[1]["id"])]
    assert [j["charged_micro_yuan"] for j in jobs] == [charged, charged]
    assert sum(j["voucher_micro_yuan"] for j in jobs) <= CAP
    [(earned,)] = coordinator.rows(
        "SELECT credits_posted FROM ledger_accounts WHERE id = ?",
        [earnings_account(provider["provider_id"])],
    )
    [(refusals,)] = coordinator.rows("SELECT COUNT(*) FROM receipt_rejections")
    assert earned == 2 * charged, "the provider is paid for everything it served"
    assert refusals == 0
    check = coordinator.admin("check-ledger", check=False)
    assert check.returncode == 0, check.stdout
