"""Billing through the coordinator: voucher and deferred parts, self-dealing, credit, the pool."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import databases
import pytest
from coordinator_harness import Api, CoordinatorProcess, FakeAgent, lease_receipt, uscc

from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt


@pytest.fixture
def coordinator(unhurried_coordinator: CoordinatorProcess) -> CoordinatorProcess:
    """These tests are about money, not losses: no agent here may look lost under load."""
    return unhurried_coordinator


async def _setup(
    coordinator: CoordinatorProcess,
    cleanup: list,
    provider_uscc: int,
    enterprise_uscc: int,
    price: int = 3_600_000_000,
) -> tuple[FakeAgent, Api]:
    agent = FakeAgent(coordinator.url, ["GPU-b0"], price)
    cleanup.append(agent)
    token = coordinator.admin_json("add-provider", "--name", "DC", "--uscc", uscc(provider_uscc))
    await agent.enrol(token["enrolment_token"])
    await agent.heartbeat()
    agent.keep_alive()
    api = Api(coordinator.url, coordinator.add_enterprise(enterprise_uscc))
    cleanup.append(api)
    return agent, api


async def _run(
    agent: FakeAgent, api: Api, milliseconds: list[int], start_delay_s: float = 0, **fields: Any
) -> tuple[dict[str, Any], list]:
    status, job = await api.submit(max_price_per_gpu_hour_micro_yuan=agent.ask, **fields)
    assert status == 201, job
    lease = await agent.wait_for_lease()
    # GPU time counts from the lease's start; reporting "started" late lets the receipts below
    # be plausible while the lease has not yet reached its end
    await asyncio.sleep(start_delay_s)
    await agent.client.status(lease["lease_id"], "started")
    results = []
    previous = None
    for gpu_ms in milliseconds:
        if not start_delay_s:
            await asyncio.sleep(
                gpu_ms / 1000 - (previous.receipt.gpu_ms / 1000 if previous else 0) + 0.05
            )
        sealed = lease_receipt(agent, lease, gpu_ms, previous)
        answer = await agent.client.signed("/v1/agent/receipts", {"receipts": [sealed.envelope]})
        results.append(answer["results"][0])
        if answer["results"][0]["status"] == "accepted":
            previous = sealed
    return await api.job(job["id"]), results


async def test_charges_split_into_voucher_and_deferred_parts(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent, api = await _setup(coordinator, cleanup, provider_uscc=1, enterprise_uscc=2)
    job, results = await _run(agent, api, [200, 500])
    assert [r["status"] for r in results] == ["accepted", "accepted"]
    charged = usage_amount(500, agent.ask)
    assert job["charged_micro_yuan"] == charged == 500_000
    assert job["voucher_micro_yuan"] == charged * 5000 // 10_000
    assert job["voucher_micro_yuan"] + job["deferred_micro_yuan"] == charged
    _, account = await api.call("GET", "/v1/account")
    assert json.dumps(account).count(str(job["deferred_micro_yuan"])) >= 1
    async with aiohttp.ClientSession() as session:
        async with session.get(coordinator.url + "/v1/vouchers/pool") as response:
            pool = await response.json()
    assert pool["used"] == job["voucher_micro_yuan"]
    # the job is still open: the rest of its voucher share stays held for it
    assert pool["held"] == usage_amount(600_000, agent.ask) // 2 - pool["used"]
    assert pool["remaining"] == pool["granted"] - pool["used"] - pool["held"]
    check = coordinator.admin("check-ledger", check=False)
    assert check.returncode == 0, check.stdout


async def test_no_voucher_when_a_company_buys_from_itself(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent, api = await _setup(coordinator, cleanup, provider_uscc=7, enterprise_uscc=7)
    job, _ = await _run(agent, api, [300])
    assert job["charged_micro_yuan"] > 0
    assert (job["voucher_micro_yuan"], job["deferred_micro_yuan"]) == (0, job["charged_micro_yuan"])


async def test_a_job_that_does_not_fit_the_credit_is_refused(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent, api = await _setup(coordinator, cleanup, provider_uscc=1, enterprise_uscc=3)
    _, account = await api.call("GET", "/v1/account")
    coordinator.admin("set-credit-limit", "--enterprise", account["id"], "--amount", "1.00")
    status, answer = await api.submit(
        max_price_per_gpu_hour_micro_yuan=agent.ask, max_duration_s=3600
    )
    assert (status, answer["error"]) == (402, "credit_exceeded"), answer
    _, listing = await api.call("GET", "/v1/jobs")
    assert listing["jobs"] == []


async def test_usage_beyond_the_jobs_maximum_duration_is_refused_by_its_window(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    # reservations hold each job's maximum cost, so a receipt cannot outrun the credit inside
    # its window; past the window it is refused by the window rule, and nothing is charged
    agent, api = await _setup(
        coordinator, cleanup, provider_uscc=1, enterprise_uscc=4, price=36_000_000_000
    )
    job, results = await _run(agent, api, [200, 1_500], max_duration_s=1)
    assert [r["status"] for r in results] == ["accepted", "rejected"], results
    assert results[1]["rule"] == "outside_billable_window"
    assert job["charged_micro_yuan"] == usage_amount(200, agent.ask)
    leases = await agent.leases(wait_ms=2000)
    assert [(lease["desired"], lease["stop_reason"]) for lease in leases] == [
        ("stop", "lease_ended")
    ]
    await agent.client.status(leases[0]["lease_id"], "exited", exit_code=143)
    ended = await api.job(job["id"])
    assert (ended["state"], ended["reason"]) == ("failed", "max_duration_reached")
    assert coordinator.admin("check-ledger", check=False).returncode == 0


async def test_a_batch_is_accepted_up_to_the_receipt_that_leaves_the_window(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    # the batch's receipts of one lease inside the window are posted together, on the last
    agent, api = await _setup(
        coordinator, cleanup, provider_uscc=1, enterprise_uscc=4, price=36_000_000_000
    )
    status, job = await api.submit(max_price_per_gpu_hour_micro_yuan=agent.ask, max_duration_s=1)
    assert status == 201, job
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    await asyncio.sleep(0.6)
    chain: list[SealedReceipt] = []
    for gpu_ms in (200, 400, 1_500):
        chain.append(lease_receipt(agent, lease, gpu_ms, chain[-1] if chain else None))
    answer = await agent.client.signed(
        "/v1/agent/receipts", {"receipts": [s.envelope for s in chain]}
    )
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "rejected"], results
    assert results[2]["rule"] == "outside_billable_window"
    assert (await api.job(job["id"]))["charged_micro_yuan"] == usage_amount(400, agent.ask)
    assert coordinator.admin("check-ledger", check=False).returncode == 0
    postings = coordinator.rows("SELECT amount FROM ledger_postings")
    assert [row[0] for row in postings] == [usage_amount(400, agent.ask)]


async def test_suanli_account_shows_the_money_in_yuan(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    agent, api = await _setup(coordinator, cleanup, provider_uscc=1, enterprise_uscc=9)
    await _run(agent, api, [300])
    env = {**os.environ, "SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": api.token or ""}
    result = await asyncio.to_thread(
        subprocess.run,
        [Path(sys.executable).parent / "suanli", "account"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "voucher 20" in result.stdout and "¥0.15 used of ¥5,000,000.00" in result.stdout
    assert "covers 50% of each charge" in result.stdout
    assert "owed (deferred): ¥0.15" in result.stdout


async def test_the_audit_compares_ledger_balances_with_the_log(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    agent, api = await _setup(coordinator, cleanup, provider_uscc=1, enterprise_uscc=11)
    await _run(agent, api, [300, 600])
    auditor = coordinator.admin_json("add-auditor", "--name", "Finance bureau")["token"]
    suanli = Path(sys.executable).parent / "suanli"

    def audit(token: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}
        command = [suanli, "audit", "verify", "--coordinator", coordinator.url, "--json"]
        if token:
            command[2:2] = ["--token", token]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    honest = await asyncio.to_thread(audit, auditor)
    assert honest.returncode == 0, honest.stdout + honest.stderr
    assert json.loads(honest.stdout)["balances_compared"] == 5, "receivable x2, earnings, pool, cap"
    refused = await asyncio.to_thread(audit, api.token)
    assert refused.returncode == 1 and "auditors" in refused.stderr
    databases.write(
        coordinator.db,
        "UPDATE ledger_accounts SET debits_posted = debits_posted - 1 WHERE id LIKE 'receivable:%'",
    )
    edited = await asyncio.to_thread(audit, auditor)
    assert edited.returncode == 3, edited.stdout + edited.stderr
    codes = {d["code"] for d in json.loads(edited.stdout)["discrepancies"]}
    assert codes == {"balance_mismatch"}
