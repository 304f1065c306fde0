"""Receipts accepted by rule: each broken rule is named, kept for auditors, and charges nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
from coordinator_harness import CoordinatorProcess, LeaseAtHand, started_lease

from shared.identity import PrivateKey, load_private_key
from shared.log_entries import decode_entry, open_acknowledgement
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt

PRICE = 6_000_000


def _now() -> int:
    return time.time_ns() // 1_000_000


class Lab(LeaseAtHand):
    def receipt(self, previous: SealedReceipt | None = None, **changes: Any) -> Receipt:
        gpus = tuple(self.lease["gpu_uuids"])
        gpu_ms = (previous.receipt.gpu_ms if previous else 0) + len(gpus) * 10
        base = Receipt(
            lease_id=self.lease["lease_id"],
            job_id=self.job_id,
            agent_id=self.agent.agent_id,
            seq=previous.receipt.seq + 1 if previous else 1,
            prev=previous.digest if previous else GENESIS_PREV,
            issued_at_ms=_now(),
            gpu_uuids=gpus,
            gpu_ms=gpu_ms,
            energy_mj=(previous.receipt.energy_mj if previous else 0) + 10,
            utilization_pct=50,
            peak_memory_bytes=1 << 30,
            price_per_gpu_hour=self.lease["price_per_gpu_hour"],
            amount=usage_amount(gpu_ms, self.lease["price_per_gpu_hour"]),
            final=False,
            exit_code=None,
        )
        receipt = base._replace(**changes)
        if "amount" not in changes:
            receipt = receipt._replace(
                amount=usage_amount(receipt.gpu_ms, receipt.price_per_gpu_hour)
            )
        return receipt

    async def send(self, *envelopes: bytes) -> list[dict[str, Any]]:
        return list((await self.send_batch(*envelopes))["results"])

    async def send_batch(self, *envelopes: bytes) -> dict[str, Any]:
        return dict(
            await self.agent.client.signed("/v1/agent/receipts", {"receipts": list(envelopes)})
        )

    def rejections(self) -> list[tuple[str, str]]:
        return self.coordinator.rows("SELECT rule, lease_id FROM receipt_rejections ORDER BY id")


@pytest.fixture
async def lab(coordinator: CoordinatorProcess, cleanup: list) -> Lab:
    started = await started_lease(coordinator, cleanup, PRICE)
    return Lab(coordinator, started.agent, started.api, started.lease, started.job_id)


async def test_a_chain_is_accepted_and_acknowledged_by_the_coordinator(lab: Lab) -> None:
    first = seal_receipt(lab.receipt(), lab.agent.key)
    second = seal_receipt(lab.receipt(first), lab.agent.key)
    answer = await lab.send_batch(first.envelope, second.envelope)
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted"], results
    # one countersignature answers the batch, and names each receipt
    assert [r["acknowledgement"] for r in results] == [0, 0]
    [envelope] = answer["acknowledgements"]
    coordinator_key = load_private_key(lab.coordinator.log_key_file)
    ack = open_acknowledgement(envelope, coordinator_key.public)
    assert ack.agent_id == lab.agent.agent_id
    one, two = ack.receipts
    assert (one.digest, one.seq, one.amount, one.delta) == (
        first.digest,
        1,
        first.receipt.amount,
        first.receipt.amount,
    )
    assert (two.digest, two.seq, two.amount, two.delta) == (
        second.digest,
        2,
        second.receipt.amount,
        second.receipt.amount - first.receipt.amount,
    )
    assert two.log_index == one.log_index + 1
    # the lease's receipts are posted together, on the last: its transfers are the posting's
    rows = lab.coordinator.rows
    postings = rows("SELECT receipt_digest, amount FROM ledger_postings")
    transfers = {
        row[0]
        for row in rows("SELECT id FROM ledger_transfers WHERE receipt_digest = ?", [second.digest])
    }
    logged = [
        row[0]
        for row in rows(
            "SELECT data FROM log_entries WHERE idx IN (?, ?) ORDER BY idx",
            [one.log_index, two.log_index],
        )
    ]
    assert postings == [(second.digest, second.receipt.amount)]
    assert one.transfer_ids == () and set(two.transfer_ids) == transfers and transfers
    assert [decode_entry(data).body.envelope for data in logged] == [
        first.envelope,
        second.envelope,
    ]
    assert (await lab.api.job(lab.job_id))["charged_micro_yuan"] == second.receipt.amount


async def test_a_large_batch_is_verified_by_the_receipt_workers_in_order(lab: Lab) -> None:
    await asyncio.sleep(0.3)  # 21 receipts of 10 ms per GPU each: the lease must be that old
    chain: list[SealedReceipt] = []
    for _ in range(10):
        chain.append(seal_receipt(lab.receipt(chain[-1] if chain else None), lab.agent.key))
    forged = seal_receipt(lab.receipt(chain[-1]), PrivateKey.generate())
    for _ in range(10):
        chain.append(seal_receipt(lab.receipt(chain[-1]), lab.agent.key))
    envelopes = [s.envelope for s in chain]
    answer = await lab.send_batch(*envelopes[:10], forged.envelope, *envelopes[10:])
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted"] * 10 + ["rejected"] + ["accepted"] * 10
    assert (results[10]["rule"], results[10]["seq"]) == ("signature", 11)
    assert [r["seq"] for r in results if r["status"] == "accepted"] == list(range(1, 21))
    [envelope] = answer["acknowledgements"]
    coordinator_key = load_private_key(lab.coordinator.log_key_file)
    acknowledged = open_acknowledgement(envelope, coordinator_key.public).receipts
    assert [a.digest for a in acknowledged] == [s.digest for s in chain]
    assert [a.log_index - acknowledged[0].log_index for a in acknowledged] == list(range(20))
    assert (await lab.api.job(lab.job_id))["charged_micro_yuan"] == chain[-1].receipt.amount
    # the batch was large enough to go to the worker processes
    assert lab.coordinator.process is not None
    workers = [
        p
        for p in psutil.Process(lab.coordinator.process.pid).children()
        if "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert workers
    # a worker killed (out of memory, say) costs no batch: the next is opened anyway
    for worker in workers:
        worker.kill()
    await asyncio.sleep(0.2)
    more = []
    for _ in range(16):
        more.append(seal_receipt(lab.receipt(more[-1] if more else chain[-1]), lab.agent.key))
    await asyncio.sleep(0.2)
    again = await lab.send_batch(*[s.envelope for s in more])
    assert [r["status"] for r in again["results"]] == ["accepted"] * 16, again["results"]
    assert "receipt worker process died" in lab.coordinator.log()


async def test_the_same_receipt_twice_gets_the_same_answer(lab: Lab) -> None:
    first = seal_receipt(lab.receipt(), lab.agent.key)
    once = await lab.send(first.envelope)
    twice = await lab.send(first.envelope)
    assert once == twice
    assert (await lab.api.job(lab.job_id))["charged_micro_yuan"] == first.receipt.amount


def _break(lab: Lab, first: SealedReceipt, rule: str) -> bytes:
    key = lab.agent.key
    if rule == "signature":
        forger = PrivateKey.generate()
        return seal_receipt(lab.receipt(first), forger).envelope
    if rule == "lease":
        return seal_receipt(lab.receipt(first, lease_id="lease-000000000000"), key).envelope
    if rule == "seq":
        return seal_receipt(lab.receipt(first, seq=3), key).envelope
    if rule == "prev":
        return seal_receipt(lab.receipt(first, prev=b"\x07" * 32), key).envelope
    if rule == "counters_decreased":
        return seal_receipt(lab.receipt(first, energy_mj=0), key).envelope
    if rule == "outside_billable_window":
        return seal_receipt(lab.receipt(first, gpu_ms=10 * 3_600_000), key).envelope
    if rule == "energy_bounds":
        return seal_receipt(lab.receipt(first, energy_mj=10**12), key).envelope
    if rule == "price":
        return seal_receipt(lab.receipt(first, price_per_gpu_hour=PRICE + 1), key).envelope
    if rule == "amount":
        receipt = lab.receipt(first)
        return seal_receipt(receipt._replace(amount=receipt.amount + 1), key).envelope
    if rule == "gpu_uuids":
        return seal_receipt(lab.receipt(first, gpu_uuids=("GPU-r0", "GPU-o0")), key).envelope
    if rule == "time_window":
        return seal_receipt(lab.receipt(first, issued_at_ms=_now() + 3_600_000), key).envelope
    if rule == "malformed":
        from shared.envelope import seal

        return seal("receipt", ["not", "a", "receipt"], key)
    raise AssertionError(rule)


RULES = [
    "signature",
    "lease",
    "seq",
    "prev",
    "counters_decreased",
    "outside_billable_window",
    "energy_bounds",
    "price",
    "amount",
    "gpu_uuids",
    "time_window",
    "malformed",
]


@pytest.mark.parametrize("rule", RULES)
async def test_each_rule_rejects_by_name_and_posts_nothing(lab: Lab, rule: str) -> None:
    first = seal_receipt(lab.receipt(), lab.agent.key)
    assert (await lab.send(first.envelope))[0]["status"] == "accepted"
    charged = (await lab.api.job(lab.job_id))["charged_micro_yuan"]
    [result] = await lab.send(_break(lab, first, rule))
    assert (result["status"], result["rule"]) == ("rejected", rule), result
    assert result["detail"]
    assert (await lab.api.job(lab.job_id))["charged_micro_yuan"] == charged
    assert lab.rejections()[-1][0] == rule
    # the chain is intact: the honest next receipt is still accepted
    honest = seal_receipt(lab.receipt(first), lab.agent.key)
    assert (await lab.send(honest.envelope))[0]["status"] == "accepted"


async def test_a_different_receipt_for_an_accepted_seq_is_refused(lab: Lab) -> None:
    first = seal_receipt(lab.receipt(), lab.agent.key)
    await lab.send(first.envelope)
    other = seal_receipt(lab.receipt(utilization_pct=99), lab.agent.key)
    [result] = await lab.send(other.envelope)
    assert (result["status"], result["rule"]) == ("rejected", "seq")


async def test_another_agent_cannot_submit_for_this_lease(lab: Lab, cleanup: list) -> None:
    intruder = cleanup[1]
    receipt = lab.receipt(agent_id=intruder.agent_id)
    envelope = seal_receipt(receipt, intruder.key).envelope
    answer = await intruder.client.signed("/v1/agent/receipts", {"receipts": [envelope]})
    assert (answer["results"][0]["status"], answer["results"][0]["rule"]) == ("rejected", "lease")


@pytest.mark.parametrize("body", [{"receipts": []}, {"receipts": "x"}, {"receipts": [1]}, [b"x"]])
async def test_malformed_batches_are_refused(lab: Lab, body: Any) -> None:
    from shared.http_client import CoordinatorError

    with pytest.raises(CoordinatorError) as caught:
        await lab.agent.client.signed("/v1/agent/receipts", body)
    assert caught.value.status == 422
