"""The transparency log of a running coordinator, as the auditor verifies it, across a rotation
of its key."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from log_story import (  # noqa: F401 - fixtures among them
    log_key,
    rotated,
)

from coordinator.client import audit
from shared import log_entries as L
from shared.checkpoint import open_checkpoint
from shared.errors import SuanliError
from shared.identity import load_private_key, parse_verifier_key
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt


def _next_receipt(started: Any, sealed: list[SealedReceipt]) -> SealedReceipt:
    """The started lease's receipt after those `sealed` so far, 100 GPU-ms a step, sealed by its
    agent."""
    lease, seq = started.lease, len(sealed) + 1
    gpu_ms = seq * 100
    receipt = Receipt(
        lease_id=lease["lease_id"],
        job_id=started.job_id,
        agent_id=started.agent.agent_id,
        seq=seq,
        prev=sealed[-1].digest if sealed else GENESIS_PREV,
        issued_at_ms=time.time_ns() // 1_000_000,
        gpu_uuids=tuple(lease["gpu_uuids"]),
        gpu_ms=gpu_ms,
        energy_mj=seq,
        utilization_pct=50,
        peak_memory_bytes=1 << 20,
        price_per_gpu_hour=lease["price_per_gpu_hour"],
        amount=usage_amount(gpu_ms, lease["price_per_gpu_hour"]),
        final=False,
        exit_code=None,
    )
    return seal_receipt(receipt, started.agent.key)


async def test_the_running_coordinator_logs_what_the_auditor_verifies(
    tmp_path: Path, unhurried_coordinator: Any, cleanup: list[Any]
) -> None:
    coordinator = unhurried_coordinator
    from coordinator_harness import started_lease

    started = await started_lease(coordinator, cleanup, 6_000_000)
    agent = started.agent
    sealed: list[SealedReceipt] = []
    for _ in range(3):
        sealed.append(_next_receipt(started, sealed))
    answer = await agent.client.signed(
        "/v1/agent/receipts", {"receipts": [s.envelope for s in sealed]}
    )
    assert [r["status"] for r in answer["results"]] == ["accepted"] * 3, answer
    state = tmp_path / "audit.json"
    for _ in range(100):
        report = await audit.verify_log(coordinator.url, None, state)
        if report.receipts == 3:
            break
        await asyncio.sleep(0.1)
    assert report.ok, report.discrepancies
    assert (report.receipts, report.leases, report.auctions_replayed) == (3, 1, 1)
    assert report.acknowledgements == 1  # one batch, one countersignature, logged after it
    assert report.agents == 2
    assert report.charged == sealed[-1].receipt.amount
    proof = await audit.check_receipt(
        coordinator.url,
        sealed[1].envelope,
        state_path=state,
        acknowledgement=answer["acknowledgements"][0],
    )
    assert proof.ok, proof.discrepancies
    assert proof.delta == sealed[1].receipt.amount - sealed[0].receipt.amount


async def test_a_running_coordinator_signs_with_a_rotated_key_and_the_auditor_follows(
    tmp_path: Path, coordinator: Any, cleanup: list[Any]
) -> None:
    from coordinator_harness import started_lease

    started = await started_lease(coordinator, cleanup, 6_000_000)
    agent = started.agent
    sealed: list[SealedReceipt] = []

    async def send(count: int) -> tuple[list[SealedReceipt], bytes]:
        batch = []
        for _ in range(count):
            sealed.append(_next_receipt(started, sealed))
            batch.append(sealed[-1])
        answer = await agent.client.signed(
            "/v1/agent/receipts", {"receipts": [s.envelope for s in batch]}
        )
        assert [r["status"] for r in answer["results"]] == ["accepted"] * count, answer
        return batch, bytes(answer["acknowledgements"][0])

    async def audited(receipts: int) -> audit.AuditReport:
        for _ in range(100):
            report = await audit.verify_log(coordinator.url, None, state)
            if report.receipts == receipts:
                break
            await asyncio.sleep(0.1)
        assert report.ok, report.discrepancies
        return report

    state = tmp_path / "audit.json"
    before, old_acknowledgement = await send(2)
    old_pin = (await audited(2)).log_key
    assert json.loads(state.read_text())["log_key"] == old_pin

    rotated = coordinator.admin_json("rotate-log-key")
    old_key, new_key = (
        parse_verifier_key(rotated["old_log_key"]),
        parse_verifier_key(rotated["new_log_key"]),
    )
    assert str(old_key) == old_pin and new_key.name == old_key.name  # the log keeps its name
    assert new_key.public != old_key.public
    archived = Path(rotated["archived_key"])
    assert archived.stat().st_mode & 0o777 == 0o600
    assert load_private_key(archived).public == old_key.public  # the old key is kept
    assert load_private_key(coordinator.log_key_file).public == new_key.public
    async with audit.LogClient(coordinator.url) as client:
        for _ in range(40):  # the server follows within a poll
            if (await client.text("/v1/log/key")).strip() == str(new_key):
                break
            await asyncio.sleep(0.05)
        assert (await client.text("/v1/log/key")).strip() == str(new_key)
        note = await client.text("/v1/log/checkpoint")
    checkpoint = open_checkpoint(note, new_key, new_key.name)
    assert checkpoint.size > rotated["log_index"]

    after, new_acknowledgement = await send(2)
    L.open_acknowledgement(new_acknowledgement, new_key.public)
    with pytest.raises(SuanliError):
        L.open_acknowledgement(new_acknowledgement, old_key.public)
    report = await audited(4)
    assert report.key_trust == "pinned" and report.acknowledgements == 2
    assert report.log_key == str(new_key) == json.loads(state.read_text())["log_key"]
    for receipt, acknowledgement in (
        (before[1], old_acknowledgement),
        (after[1], new_acknowledgement),
    ):
        proof = await audit.check_receipt(
            coordinator.url, receipt.envelope, old_pin, acknowledgement=acknowledgement
        )
        assert proof.ok, proof.discrepancies

    coordinator.restart()  # the new key, and the log's name, survive a restart
    async with audit.LogClient(coordinator.url) as client:
        assert (await client.text("/v1/log/key")).strip() == str(new_key)
    assert (await audit.verify_log(coordinator.url, old_pin, None)).ok
