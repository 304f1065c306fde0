"""The host's inventory: NVML-measured GPUs with their BF16 throughput, plus CPU, memory and disk.

This is what `suanli-agent inventory --json` prints and what heartbeats are built from.
Every number is an int except the display figure `tflops_bf16`; `tflops_bf16_milli`
carries the same value as an int for anything that signs or sums it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any, TypedDict

import psutil

from agent.nvml import GpuSample, NvmlSampler
from shared.gpu_models import canonical_model, tflops_bf16_milli, tflops_display

__all__ = [
    "GpuRecord",
    "HostRecord",
    "Inventory",
    "build_inventory",
    "gpu_record",
    "offered_gpus",
    "read_host",
    "read_inventory",
    "total_tflops_bf16_milli",
]


class GpuRecord(TypedDict):
    index: int
    uuid: str | None
    name: str | None
    model: str | None  # canonical model from the table ("H100 SXM"), else the NVML name
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    utilization_gpu_pct: int | None
    temperature_c: int | None
    power_mw: int | None
    energy_mj: int | None
    tflops_bf16: int | float | None
    tflops_bf16_milli: int | None
    compute_capability: str | None  # "9.0"
    power_limit_mw: int | None
    healthy: bool
    health_reason: str | None
    ecc_uncorrected: int | None
    retired_pages_pending: bool | None


class HostRecord(TypedDict):
    hostname: str
    cpu_count: int
    cpu_percent: int | None
    memory_total_bytes: int
    memory_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int


class Inventory(TypedDict):
    gpus: list[GpuRecord]
    host: HostRecord
    driver_version: str | None
    cuda_version: str | None
    nvml_note: str | None


def gpu_record(sample: GpuSample) -> GpuRecord:
    """One NVML sample as an inventory entry, with its throughput from the model table."""
    model = None if sample.name is None else canonical_model(sample.name)
    milli = None if model is None else tflops_bf16_milli(model)
    capability = sample.compute_capability
    return {
        "index": sample.index,
        "uuid": sample.uuid,
        "name": sample.name,
        "model": model,
        "memory_total_bytes": sample.memory_total_bytes,
        "memory_used_bytes": sample.memory_used_bytes,
        "utilization_gpu_pct": sample.utilization_gpu_pct,
        "temperature_c": sample.temperature_c,
        "power_mw": sample.power_mw,
        "energy_mj": sample.energy_mj,
        "tflops_bf16": tflops_display(milli),
        "tflops_bf16_milli": milli,
        "compute_capability": None if capability is None else f"{capability[0]}.{capability[1]}",
        "power_limit_mw": sample.power_limit_mw,
        "healthy": sample.healthy,
        "health_reason": sample.health_reason,
        "ecc_uncorrected": sample.ecc_uncorrected,
        "retired_pages_pending": sample.retired_pages_pending,
    }


def read_host(disk_path: str = "/", cpu_interval_s: float | None = 0.1) -> HostRecord:
    """CPU, memory and disk of this host through psutil. Blocks for cpu_interval_s.

    cpu_interval_s=None measures CPU use since the previous call instead of blocking
    (what a daemon sampling periodically wants); the first such call has no
    previous one, and psutil then reports 0.
    """
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    cpu_percent = psutil.cpu_percent(interval=cpu_interval_s)
    return {
        "hostname": socket.gethostname(),
        "cpu_count": psutil.cpu_count(logical=True) or 1,
        "cpu_percent": round(cpu_percent),
        "memory_total_bytes": int(memory.total),
        "memory_available_bytes": int(memory.available),
        "disk_path": disk_path,
        "disk_total_bytes": int(disk.total),
        "disk_free_bytes": int(disk.free),
    }


def build_inventory(
    sampler: NvmlSampler, *, disk_path: str = "/", cpu_interval_s: float | None = 0.1
) -> Inventory:
    """Sample the GPUs through `sampler` and the host through psutil. Blocking."""
    samples = sampler.sample()
    return {
        "gpus": [gpu_record(sample) for sample in samples],
        "host": read_host(disk_path, cpu_interval_s),
        "driver_version": sampler.driver_version,
        "cuda_version": sampler.cuda_version,
        "nvml_note": sampler.note,
    }


def read_inventory(*, disk_path: str = "/", cpu_interval_s: float | None = 0.1) -> Inventory:
    """One-shot inventory: start NVML, sample, shut it down."""
    with NvmlSampler() as sampler:
        return build_inventory(sampler, disk_path=disk_path, cpu_interval_s=cpu_interval_s)


def offered_gpus(inventory: Inventory, offered: Iterable[int] | None) -> list[GpuRecord]:
    """The healthy GPUs among the operator's offered indices (all GPUs when offered is None).

    An unhealthy GPU is reported in heartbeats but never sold.
    """
    wanted = None if offered is None else set(offered)
    return [
        gpu
        for gpu in inventory["gpus"]
        if gpu["healthy"] and gpu["uuid"] is not None and (wanted is None or gpu["index"] in wanted)
    ]


def total_tflops_bf16_milli(gpus: Iterable[GpuRecord]) -> int:
    """Summed dense BF16 milli-TFLOPS of the GPUs whose model is known."""
    return sum(gpu["tflops_bf16_milli"] or 0 for gpu in gpus)


def heartbeat_inventory(
    samples: Iterable[GpuSample], disk_path: str, driver_version: str | None
) -> dict[str, Any]:
    """What a heartbeat tells of the offered GPUs and the host (the GPUs' fixed facts, their
    model and speed, were told at enrolment)."""
    gpus = []
    for sample in sorted(samples, key=lambda s: s.index):
        record = gpu_record(sample)
        gpus.append(
            {
                k: v
                for k, v in record.items()
                if k not in ("tflops_bf16", "model", "compute_capability")
            }
        )
    host = read_host(disk_path, cpu_interval_s=None)
    return {"gpus": gpus, "host": dict(host), "driver_version": driver_version}
