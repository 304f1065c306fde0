"""Metering and the receipt spool: cumulative counters, chains that survive restarts."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from agent.lease import ContainerRun, Failure, LeaseRecord, LeaseTerms, Metering, Window
from agent.metering import account_sample, next_receipt, seal_final_receipt, seal_interim_receipt
from agent.nvml import GpuSample
from agent.receipt_delivery import acknowledged_digests, acknowledging
from agent.spool import Spool
from shared.identity import PrivateKey
from shared.log_entries import AcknowledgedReceipt, Acknowledgement, seal_acknowledgement
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, check_pure, open_receipt

KEY = PrivateKey.from_seed(b"\x05" * 32)
GPUS = ("GPU-a", "GPU-b")
NO_WINDOW = Window()


def record(
    *,
    billable_from_ms: int | None = 10_000,
    window: Window = NO_WINDOW,
    started_at_ms: int | None = 10_000,
    ended_at_ms: int | None = None,
    exit_code: int | None = None,
) -> LeaseRecord:
    return LeaseRecord(
        LeaseTerms(
            lease_id="lease-1", job_id="job-1", gpu_uuids=GPUS, price_per_gpu_hour=7_200_000
        ),
        created_at_ms=1_000,
        container=ContainerRun(
            started_at_ms=started_at_ms, ended_at_ms=ended_at_ms, exit_code=exit_code
        ),
        metering=Metering(billable_from_ms=billable_from_ms, window=window),
    )


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
    lease = record(billable_from_ms=None)
    account_sample(lease, {"GPU-a": sample("GPU-a", 1_000)})
    account_sample(lease, {"GPU-a": sample("GPU-a", 9_000)})
    receipt = next_receipt(lease, KEY.public.agent_id, now_ms=70_000, final=False)
    assert (receipt.gpu_ms, lease.metering.energy_mj, lease.metering.util_samples) == (0, 0, 0)


def test_billing_counts_from_the_start_acknowledgement_not_the_container_start() -> None:
    lease = record(billable_from_ms=12_500)
    assert next_receipt(lease, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 57_500


def test_gpu_time_never_passes_the_window_the_coordinator_described() -> None:
    # the window closed at 40 s by the coordinator's clock (a cancel plus its grace, say)
    closed = record(billable_from_ms=10_000, window=Window(10_500, 40_000))
    assert (
        next_receipt(closed, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 29_500
    )
    # a host clock behind the coordinator's bills no more than its receipts' times allow
    behind = record(billable_from_ms=10_000, window=Window(15_000, 10**9))
    assert (
        next_receipt(behind, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 2 * 55_000
    )


def test_a_lease_reported_started_by_an_older_agent_counts_from_its_start(
    tmp_path: Path,
) -> None:
    # the spool of an agent older than billable windows: its lease JSON has no billable_from_ms
    Spool(tmp_path / "spool.db").close()
    with sqlite3.connect(tmp_path / "spool.db") as db:
        for lease_id, status in (("lease-1", "started"), ("lease-2", "")):
            db.execute(
                "INSERT INTO leases (lease_id, job_id, gpu_uuids, price_per_gpu_hour, lease, "
                "started_at_ms, status_reported, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (lease_id, "job-1", '["GPU-a", "GPU-b"]', 7_200_000, OLD_LEASE, 10_000, status, 1),
            )
    started, unreported = Spool(tmp_path / "spool.db").leases()
    assert next_receipt(started, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == (
        2 * 60_000
    )
    assert next_receipt(unreported, KEY.public.agent_id, now_ms=70_000, final=False).gpu_ms == 0


OLD_LEASE = (
    '{"desired": "run", "ends_at_ms": 99000, "gpu_uuids": ["GPU-a", "GPU-b"], "job": {"command": '
    '["true"], "cpus_milli": 1000, "env": {}, "image": "busybox", "max_duration_s": 60, '
    '"memory_bytes": 67108864}, "job_id": "job-1", "lease_id": "lease-1", '
    '"price_per_gpu_hour": 7200000, "state": "assigned", "stop_reason": null, '
    '"agent_note_bytes": 12, "agent_stop_reason": "the lease has ended"}'
)


def test_a_lease_record_comes_back_from_the_spool_as_it_was_saved(tmp_path: Path) -> None:
    lease = record(window=Window(10_500, None), ended_at_ms=50_000, exit_code=1)
    lease.terms = LeaseTerms.from_wire(
        {
            "lease_id": "lease-1",
            "job_id": "job-1",
            "gpu_uuids": list(GPUS),
            "price_per_gpu_hour": 7_200_000,
            "ends_at_ms": 80_000,
            "job": {
                "image": "busybox",
                "command": ["sh", "-c", "true"],
                "env": {"A": "1"},
                "cpus_milli": 500,
                "memory_bytes": 1 << 26,
                "max_duration_s": 60,
            },
        }
    )
    account_sample(lease, {"GPU-a": sample("GPU-a", 1_000)})
    lease.container.container_id, lease.container.stop_reason = "c0ffee", "stopped"
    lease.container.failure = Failure("start_failed", "no")
    lease.reporting.status, lease.reporting.log_offset, lease.reporting.note_bytes = "started", 9, 4
    seal_interim_receipt(lease, KEY, 70_000)
    spool = Spool(tmp_path / "spool.db")
    spool.save_lease(lease)
    assert spool.leases() == [lease]


def test_a_spool_an_older_agent_wrote_is_read_in_full(tmp_path: Path) -> None:
    Spool(tmp_path / "spool.db").close()
    with sqlite3.connect(tmp_path / "spool.db") as db:
        db.execute(
            "INSERT INTO leases (lease_id, job_id, gpu_uuids, price_per_gpu_hour, lease, "
            "container_id, started_at_ms, ended_at_ms, exit_code, energy_base, energy_mj, "
            "last_seq, final_sealed, log_offset, status_reported, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "lease-1",
                "job-1",
                '["GPU-a", "GPU-b"]',
                7_200_000,
                OLD_LEASE,
                "c0ffee",
                10_000,
                40_000,
                137,
                '{"GPU-a": {"base": 5, "carried": 3, "last": 9}}',
                7,
                2,
                1,
                40,
                "started",
                1,
            ),
        )
    [old] = Spool(tmp_path / "spool.db").leases()
    assert old.terms.ends_at_ms == 99_000 and old.terms.job is not None
    assert (old.terms.job.image, old.terms.job.command) == ("busybox", ("true",))
    assert (old.container.container_id, old.container.exit_code) == ("c0ffee", 137)
    assert old.container.stop_reason == "the lease has ended" and old.container.failure is None
    assert old.metering.energy["GPU-a"].carried == 3 and old.metering.energy_mj == 7
    assert (old.chain.last_seq, old.chain.final_sealed) == (2, True)
    assert (old.reporting.log_offset, old.reporting.note_bytes) == (40, 12)


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
    assert lease.metering.energy_mj == 700 + 300
    assert lease.metering.util_sum // lease.metering.util_samples == (50 + 90) // 2
    assert lease.metering.peak_memory_bytes == 3 << 30


def test_an_energy_counter_reset_keeps_what_was_counted() -> None:
    lease = record()
    for value in (1_000, 1_500, 200, 600):
        account_sample(lease, {"GPU-a": sample("GPU-a", value)})
    assert lease.metering.energy_mj == 500 + 400


def test_a_gpu_without_an_energy_counter_adds_nothing() -> None:
    lease = record()
    account_sample(lease, {"GPU-a": sample("GPU-a", None), "GPU-b": sample("GPU-b", None)})
    assert lease.metering.energy_mj == 0 and lease.metering.util_samples == 1


def test_samples_before_start_or_after_end_are_ignored() -> None:
    lease = record(started_at_ms=None)
    account_sample(lease, {"GPU-a": sample("GPU-a", 10)})
    assert lease.metering.util_samples == 0


def test_sealed_chain_passes_the_coordinators_pure_checks() -> None:
    lease = record()
    previous = None
    for now in (70_000, 130_000, 190_000):
        sealed = seal_interim_receipt(lease, KEY, now)
        opened = open_receipt(sealed.envelope, KEY.public)
        check_pure(previous, opened.receipt)
        previous = opened
    lease.container.ended_at_ms, lease.container.exit_code = 200_000, 0
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
    chain = restored.chain
    assert (chain.last_seq, chain.last_digest, chain.last_gpu_ms) == (
        3,
        sealed[2].digest,
        2 * 180_000,
    )
    assert chain.accepted_seq == 1
    assert (restored.terms, restored.metering) == (lease.terms, lease.metering)
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
    acknowledgements = acknowledged_digests([named, b"\x93not an envelope"])
    assert acknowledging(acknowledgements, 0, sealed[0].digest) == named
    assert acknowledging(acknowledgements, 0, sealed[1].digest) is None  # not the receipt sent
    assert acknowledging(acknowledgements, 1, sealed[0].digest) is None  # malformed
    assert acknowledging(acknowledgements, 2, sealed[0].digest) is None  # no such position
    assert acknowledging(acknowledgements, "0", sealed[0].digest) is None


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
