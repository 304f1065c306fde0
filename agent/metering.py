"""Metering a lease from NVML samples, and sealing its cumulative, chained receipts."""

from __future__ import annotations

from collections.abc import Mapping

from agent.nvml import GpuSample
from agent.spool import LeaseRecord
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt


def billable_from_ms(record: LeaseRecord) -> int | None:
    """When, by this host's clock, the coordinator had the start report: billing counts from
    there, since the lease's billable window opens when the coordinator hears of the start."""
    if record.started_at_ms is None:
        return None
    if "billable_from_ms" in record.lease:  # None: the coordinator never opened the window
        acknowledged = record.lease["billable_from_ms"]
        return acknowledged if type(acknowledged) is int else None
    # a lease started by an agent older than billable windows counts from its own start
    return record.started_at_ms if record.status_reported in ("started", "exited") else None


def account_sample(record: LeaseRecord, samples: Mapping[str, GpuSample]) -> None:
    """Fold one sample of the leased GPUs into the lease's energy, utilisation and memory."""
    if billable_from_ms(record) is None or record.ended_at_ms is not None:
        return
    utilisations = []
    memory_used = 0
    for uuid in record.gpu_uuids:
        sample = samples.get(uuid)
        if sample is None:
            continue
        if sample.utilization_gpu_pct is not None:
            utilisations.append(sample.utilization_gpu_pct)
        memory_used += sample.memory_used_bytes or 0
        if sample.energy_mj is not None:
            _account_energy(record, uuid, sample.energy_mj)
    if utilisations:
        record.util_sum += sum(utilisations) // len(utilisations)
        record.util_samples += 1
    record.peak_memory_bytes = max(record.peak_memory_bytes, memory_used)


def _account_energy(record: LeaseRecord, uuid: str, counter_mj: int) -> None:
    # energy counters count from driver load; a reload restarts them, so keep what was
    # counted before the restart and count on from the new value
    state = record.energy_base.get(uuid)
    if state is None:
        record.energy_base[uuid] = {"base": counter_mj, "last": counter_mj, "carried": 0}
        return
    if counter_mj < state["last"]:
        state["carried"] += state["last"] - state["base"]
        state["base"] = counter_mj
    state["last"] = counter_mj
    record.energy_mj = sum(
        s["carried"] + s["last"] - s["base"] for s in record.energy_base.values()
    )


def learn_window(record: LeaseRecord, window: object) -> None:
    """Fold what the coordinator says of the lease's window into what the agent knows: once
    open it stays open, and it only ever closes earlier (an older answer may arrive late)."""
    if type(window) is not dict:
        return
    known = dict(record.lease.get("window") or {})
    opened, closes = window.get("opened_at_ms"), window.get("closes_at_ms")
    if type(opened) is int and type(known.get("opened_at_ms")) is not int:
        known["opened_at_ms"] = opened
    if type(closes) is int:
        before = known.get("closes_at_ms")
        known["closes_at_ms"] = min(closes, before) if type(before) is int else closes
    record.lease["window"] = known


def billable_gpu_ms(record: LeaseRecord, issued_at_ms: int, now_ms: int) -> int:
    """GPU time served since the coordinator had the start report, and never more than the
    lease's billable window as the coordinator last described it (its own clock's times)."""
    gpus = len(record.gpu_uuids)
    since = billable_from_ms(record)
    if since is None:
        return 0
    end = record.ended_at_ms if record.ended_at_ms is not None else now_ms
    served = gpus * max(0, end - since)
    window = record.lease.get("window") or {}
    opened, closes = window.get("opened_at_ms"), window.get("closes_at_ms")
    if type(opened) is int and type(closes) is int:
        served = min(served, gpus * max(0, min(issued_at_ms, closes) - opened))
    return served


def next_receipt(record: LeaseRecord, agent_id: str, now_ms: int, final: bool) -> Receipt:
    """The lease's next cumulative receipt; counters never go down, even if the clock does."""
    issued = max(record.last_issued_at_ms, now_ms)
    gpu_ms = max(record.last_gpu_ms, billable_gpu_ms(record, issued, now_ms))
    return Receipt(
        lease_id=record.lease_id,
        job_id=record.job_id,
        agent_id=agent_id,
        seq=record.last_seq + 1,
        prev=record.last_digest or GENESIS_PREV,
        issued_at_ms=issued,
        gpu_uuids=record.gpu_uuids,
        gpu_ms=gpu_ms,
        energy_mj=record.energy_mj,
        utilization_pct=min(100, record.util_sum // record.util_samples)
        if record.util_samples
        else 0,
        peak_memory_bytes=record.peak_memory_bytes,
        price_per_gpu_hour=record.price_per_gpu_hour,
        amount=usage_amount(gpu_ms, record.price_per_gpu_hour),
        final=final,
        exit_code=(record.exit_code if record.exit_code is not None else -1) if final else None,
    )


def seal_interim_receipt(record: LeaseRecord, key: PrivateKey, now_ms: int) -> SealedReceipt:
    return _seal_next(record, key, now_ms, final=False)


def seal_final_receipt(record: LeaseRecord, key: PrivateKey, now_ms: int) -> SealedReceipt:
    return _seal_next(record, key, now_ms, final=True)


def _seal_next(record: LeaseRecord, key: PrivateKey, now_ms: int, final: bool) -> SealedReceipt:
    """Seal the next receipt and advance the record's chain (the caller spools both together)."""
    sealed = seal_receipt(next_receipt(record, key.public.agent_id, now_ms, final), key)
    receipt = sealed.receipt
    record.last_seq = receipt.seq
    record.last_digest = sealed.digest
    record.last_gpu_ms = receipt.gpu_ms
    record.last_issued_at_ms = receipt.issued_at_ms
    record.final_sealed = final
    return sealed
