"""Metering a lease from NVML samples, and sealing its cumulative, chained receipts."""

from __future__ import annotations

from collections.abc import Mapping

from agent.lease import EnergyCounter, LeaseRecord, Window
from agent.nvml import GpuSample
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt


def billable_from_ms(record: LeaseRecord) -> int | None:
    """When, by this host's clock, the coordinator had the start report: billing counts from
    there, since the lease's billable window opens when the coordinator hears of the start."""
    if record.container.started_at_ms is None:
        return None
    return record.metering.billable_from_ms


def account_sample(record: LeaseRecord, samples: Mapping[str, GpuSample]) -> None:
    """Fold one sample of the leased GPUs into the lease's energy, utilisation and memory."""
    if billable_from_ms(record) is None or record.container.ended_at_ms is not None:
        return
    metering = record.metering
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
        metering.util_sum += sum(utilisations) // len(utilisations)
        metering.util_samples += 1
    metering.peak_memory_bytes = max(metering.peak_memory_bytes, memory_used)


def _account_energy(record: LeaseRecord, uuid: str, counter_mj: int) -> None:
    # energy counters count from driver load; a reload restarts them, so keep what was
    # counted before the restart and count on from the new value
    metering = record.metering
    counter = metering.energy.get(uuid)
    if counter is None:
        metering.energy[uuid] = EnergyCounter(base=counter_mj, last=counter_mj)
        return
    if counter_mj < counter.last:
        counter.carried += counter.last - counter.base
        counter.base = counter_mj
    counter.last = counter_mj
    metering.energy_mj = sum(c.carried + c.last - c.base for c in metering.energy.values())


def learn_window(record: LeaseRecord, window: object) -> None:
    """Fold what the coordinator says of the lease's window into what the agent knows: once
    open it stays open, and it only ever closes earlier (an older answer may arrive late)."""
    if type(window) is not dict:
        return
    known = record.metering.window
    opened, closes = window.get("opened_at_ms"), window.get("closes_at_ms")
    if type(opened) is not int or known.opened_at_ms is not None:
        opened = known.opened_at_ms
    if type(closes) is not int:
        closes = known.closes_at_ms
    elif known.closes_at_ms is not None:
        closes = min(closes, known.closes_at_ms)
    record.metering.window = Window(opened, closes)


def billable_gpu_ms(record: LeaseRecord, issued_at_ms: int, now_ms: int) -> int:
    """GPU time served since the coordinator had the start report, and never more than the
    lease's billable window as the coordinator last described it (its own clock's times)."""
    gpus = len(record.gpu_uuids)
    since = billable_from_ms(record)
    if since is None:
        return 0
    ended = record.container.ended_at_ms
    end = ended if ended is not None else now_ms
    served = gpus * max(0, end - since)
    opened, closes = record.metering.window.opened_at_ms, record.metering.window.closes_at_ms
    if opened is not None and closes is not None:
        served = min(served, gpus * max(0, min(issued_at_ms, closes) - opened))
    return served


def next_receipt(record: LeaseRecord, agent_id: str, now_ms: int, final: bool) -> Receipt:
    """The lease's next cumulative receipt; counters never go down, even if the clock does."""
    chain, metering, exit_code = record.chain, record.metering, record.container.exit_code
    issued = max(chain.last_issued_at_ms, now_ms)
    gpu_ms = max(chain.last_gpu_ms, billable_gpu_ms(record, issued, now_ms))
    return Receipt(
        lease_id=record.lease_id,
        job_id=record.job_id,
        agent_id=agent_id,
        seq=chain.last_seq + 1,
        prev=chain.last_digest or GENESIS_PREV,
        issued_at_ms=issued,
        gpu_uuids=record.gpu_uuids,
        gpu_ms=gpu_ms,
        energy_mj=metering.energy_mj,
        utilization_pct=min(100, metering.util_sum // metering.util_samples)
        if metering.util_samples
        else 0,
        peak_memory_bytes=metering.peak_memory_bytes,
        price_per_gpu_hour=record.price_per_gpu_hour,
        amount=usage_amount(gpu_ms, record.price_per_gpu_hour),
        final=final,
        exit_code=(exit_code if exit_code is not None else -1) if final else None,
    )


def seal_interim_receipt(record: LeaseRecord, key: PrivateKey, now_ms: int) -> SealedReceipt:
    return _seal_next(record, key, now_ms, final=False)


def seal_final_receipt(record: LeaseRecord, key: PrivateKey, now_ms: int) -> SealedReceipt:
    return _seal_next(record, key, now_ms, final=True)


def _seal_next(record: LeaseRecord, key: PrivateKey, now_ms: int, final: bool) -> SealedReceipt:
    """Seal the next receipt and advance the record's chain (the caller spools both together)."""
    sealed = seal_receipt(next_receipt(record, key.public.agent_id, now_ms, final), key)
    receipt = sealed.receipt
    chain = record.chain
    chain.last_seq = receipt.seq
    chain.last_digest = sealed.digest
    chain.last_gpu_ms = receipt.gpu_ms
    chain.last_issued_at_ms = receipt.issued_at_ms
    chain.final_sealed = final
    return sealed
