"""Metering and the receipt spool: cumulative counters, chains that survive restarts."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from agent.daemon import _acknowledged_digests, _acknowledging
from agent.metering import account_sample, next_receipt, seal_final_receipt, seal_interim_receipt
from agent.nvml import GpuSample
from agent.spool import LeaseRecord, Spool
from shared.identity import PrivateKey
from shared.log_entries import AcknowledgedReceipt, Acknowledgement, seal_acknowledgement
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, check_pure, open_receipt

KEY = PrivateKey.from_seed(b"\x05" * 32)
GPUS = ("GPU-a", "GPU-b")


def record(**changes: object) -> LeaseRecord:
    base = LeaseRecord(
        lease_id="lease-1",
        job_id="job-1",
        gpu_uuids=GPUS,
        price_per_gpu_hour=7_200_000,
        lease={"job": {}, "billable_from_ms": 10_000},
        created_at_ms=1_000,
        started_at_ms=10_000,
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def sample(uuid: str, energy: int | None, util: int = 50, memory: int = 1 << 30) -> GpuSample:
    return GpuSample(
        index=0,
        uuid=uuid,
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 << 30,
        memory_used_bytes=memory,
        compute_capability=(9, 0),
        power_limit_mw=700_000,
        utilization_gpu_pct=util,
        temperature_c=50,
        power_mw=300_000,
        energy_mj=energy,
        ecc_uncorrected=0,
        retired_pages_pending=False,
        healthy=True,
        health_reason=None,
    )


def test_gpu_ms_is_leased_gpus_times_running_time() -> None:
    receipt = next_receipt(record(), KEY.public.agent_id, now_ms=70_000, final=False)
    assert receipt.gpu_ms == 2 * 60_000
    assert receipt.amount == usage_amount(120_000, 7_200_000) == 240_000
    assert (receipt.seq, receipt.prev) == (1, GENESIS_PREV)


def test_nothing_is_billed_or_metered_before_the_coordinator_has_the_start() -> None:
    lease = record(lease={"job": {}}, status_reported="")
    account_sample(lease, {"GPU-a": sample("GPU-a", 1_000)})
    account_sample(lease, {"GPU-a": sample("GPU-a", 9_000)})
    receipt = next_receipt(lease, KEY.public.agent_id, now_ms=70_000, final=False)
    assert (receipt.gpu_ms, lease.energy_mj, lease.util_samples) == (0, 0, 0)


def test_billing_counts_from_the_start_acknowledgement_not_the_container_start() -> None:
    lease = record(lease={"job": {}, "billable_from_ms": 12_500})
    assert next_receipt(lease, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 57_500


def test_gpu_time_never_passes_the_window_the_coordinator_described() -> None:
    # the window closed at 40 s by the coordinator's clock (a cancel plus its grace, say)
    closed = record(
        lease={
            "job": {},
            "billable_from_ms": 10_000,
            "window": {"opened_at_ms": 10_500, "closes_at_ms": 40_000},
        }
    )
    assert (
        next_receipt(closed, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 29_500
    )
    # a host clock behind the coordinator's bills no more than its receipts' times allow
    behind = record(
        lease={
            "job": {},
            "billable_from_ms": 10_000,
            "window": {"opened_at_ms": 15_000, "closes_at_ms": 10**9},
        }
    )
    assert (
        next_receipt(behind, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 55_000
    )


def test_a_lease_reported_started_by_an_older_agent_counts_from_its_start() -> None:
    lease = record(lease={"job": {}}, status_reported="started")
    assert next_receipt(lease, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 60_000


def test_final_receipt_stops_at_the_exit() -> None:
    lease = record(ended_at_ms=40_000, exit_code=137)
    receipt = next_receipt(lease, KEY.public.agent_id, now_ms=99_000, final=True)
    assert (receipt.gpu_ms, receipt.final, receipt.exit_code) == (60_000, True, 137)


def test_counters_never_go_down_when_the_clock_does() -> None:
    lease = record()
    seal_interim_receipt(lease, KEY, now_ms=70_000)
    again = next_receipt(lease, KEY.public.agent_id, now_ms=50_000, final=False)
    assert again.gpu_ms == 120_000 and again.issued_at_ms == 70_000


def test_energy_utilisation_and_memory_from_samples() -> None:
    lease = record()
    account_sample(
        lease,
        {
            "GPU-a": sample("GPU-a", 1_000, util=40, memory=2 << 30),
            "GPU-b": sample("GPU-b", 5_000, util=60, memory=1 << 30),
        },
    )
    account_sample(
        lease,
        {
            "GPU-a": sample("GPU-a", 1_700, util=80),
            "GPU-b": sample("GPU-b", 5_300, util=100),
            "GPU-other": sample("GPU-other", 10**9),
        },
    )
    assert lease.energy_mj == 700 + 300
    assert lease.util_sum // lease.util_samples == (50 + 90) // 2
    assert lease.peak_memory_bytes == 3 << 30


def test_an_energy_counter_reset_keeps_what_was_counted() -> None:
    lease = record()
    for value in (1_000, 1_500, 200, 600):
        account_sample(lease, {"GPU-a": sample("GPU-a", value)})
    assert lease.energy_mj == 500 + 400


def test_a_gpu_without_an_energy_counter_adds_nothing() -> None:
    lease = record()
    account_sample(lease, {"GPU-a": sample("GPU-a", None), "GPU-b": sample("GPU-b", None)})
    assert lease.energy_mj == 0 and lease.util_samples == 1


def test_samples_before_start_or_after_end_are_ignored() -> None:
    lease = record(started_at_ms=None)
    account_sample(lease, {"GPU-a": sample("GPU-a", 10)})
    assert lease.util_samples == 0


def test_sealed_chain_passes_the_coordinators_pure_checks() -> None:
    lease = record()
    previous = None
    for now in (70_000, 130_000, 190_000):
        sealed = seal_interim_receipt(lease, KEY, now)
        opened = open_receipt(sealed.envelope, KEY.public)
        check_pure(previous, opened.receipt)
        previous = opened
    lease.ended_at_ms, lease.exit_code = 200_000, 0
    final = seal_final_receipt(lease, KEY, 201_000)
    check_pure(previous, final.receipt)
    assert final.receipt.gpu_ms == 2 * 190_000


def test_spool_keeps_receipts_until_acknowledged_and_rejections_forever(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert stat.S_IMODE((tmp_path / "spool.db").stat().st_mode) == 0o600
    lease = record()
    spool.save_lease(lease)
    sealed = [seal_interim_receipt(lease, KEY, now) for now in (70_000, 130_000, 190_000)]
    for item in sealed:
        spool.add_receipt(lease, item.receipt.seq, item.envelope, item.digest, 1)
    assert [r.seq for r in spool.pending_receipts()] == [1, 2, 3]
    spool.acknowledge("lease-1", 1, b"ack", 2)
    spool.reject("lease-1", 2, "price", "wrong price")
    spool.close()

    reopened = Spool(tmp_path / "spool.db")
    assert [r.seq for r in reopened.pending_receipts()] == [3]
    kept = {r.seq: r for r in reopened.receipts("lease-1")}
    assert kept[2].rejected_rule == "price" and kept[1].acked_at_ms == 2
    [restored] = reopened.leases()
    assert (restored.last_seq, restored.last_digest, restored.last_gpu_ms) == (
        3,
        sealed[2].digest,
        2 * 180_000,
    )
    assert restored.accepted_seq == 1
    continued = seal_interim_receipt(restored, KEY, 250_000)
    check_pure(open_receipt(sealed[2].envelope, KEY.public), continued.receipt)


def test_an_accepted_receipt_is_dropped_only_if_its_acknowledgement_names_it() -> None:
    coordinator = PrivateKey.generate()
    sealed = [seal_interim_receipt(record(), KEY, now) for now in (70_000, 130_000)]
    named = seal_acknowledgement(
        Acknowledgement(
            KEY.public.agent_id,
            5,
            (
                AcknowledgedReceipt(
                    sealed[0].digest,
                    "lease-1",
                    1,
                    sealed[0].receipt.amount,
                    sealed[0].receipt.amount,
                    7,
                    (),
                ),
            ),
        ),
        coordinator,
    )
    acknowledgements = _acknowledged_digests([named, b"\x93not an envelope"])
    assert _acknowledging(acknowledgements, 0, sealed[0].digest) == named
    assert _acknowledging(acknowledgements, 0, sealed[1].digest) is None  # not the receipt sent
    assert _acknowledging(acknowledgements, 1, sealed[0].digest) is None  # malformed
    assert _acknowledging(acknowledgements, 2, sealed[0].digest) is None  # no such position
    assert _acknowledging(acknowledgements, "0", sealed[0].digest) is None


def test_one_acknowledgement_is_kept_once_for_all_the_receipts_it_names(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    lease = record()
    spool.save_lease(lease)
    sealed = [seal_interim_receipt(lease, KEY, now) for now in (70_000, 130_000)]
    for item in sealed:
        spool.add_receipt(lease, item.receipt.seq, item.envelope, item.digest, 1)
    for item in sealed:
        spool.acknowledge("lease-1", item.receipt.seq, b"one acknowledgement for both", 2)
    assert spool.pending_receipts() == []
    spool.close()
    with sqlite3.connect(tmp_path / "spool.db") as db:
        assert db.execute("SELECT COUNT(*), MIN(envelope) FROM acknowledgements").fetchone() == (
            1,
            b"one acknowledgement for both",
        )
        assert db.execute("SELECT COUNT(DISTINCT acknowledgement) FROM receipts").fetchone() == (1,)
