"""What an agent's heartbeat may claim: its inventory, checked field by field before use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.errors import Unprocessable
from shared.gpu_models import canonical_model

MAX_GPUS_PER_AGENT = 64
MAX_TEXT = 128
_INT64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class GpuReport:
    index: int
    uuid: str
    model: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_gpu_pct: int | None
    temperature_c: int | None
    power_mw: int | None
    power_limit_mw: int | None
    energy_mj: int | None
    healthy: bool
    health_reason: str | None


@dataclass(frozen=True, slots=True)
class HostReport:
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int | None
    disk_free_bytes: int | None


@dataclass(frozen=True, slots=True)
class Inventory:
    gpus: tuple[GpuReport, ...]
    host: HostReport
    driver_version: str | None


def _int(
    data: dict[str, Any],
    name: str,
    where: str,
    *,
    optional: bool = False,
    low: int = 0,
    high: int = _INT64,
) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if type(value) is not int or not low <= value <= high:
        raise Unprocessable(f"{where}.{name} must be an integer from {low} to {high}")
    return value


def _text(data: dict[str, Any], name: str, where: str, *, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise Unprocessable(f"{where}.{name} must be 1 to {MAX_TEXT} printable characters")
    return value


def parse_inventory(raw: object) -> Inventory:
    if type(raw) is not dict:
        raise Unprocessable("inventory must be a map with gpus, host and driver_version")
    gpus_raw = raw.get("gpus")
    if type(gpus_raw) is not list or len(gpus_raw) > MAX_GPUS_PER_AGENT:
        raise Unprocessable(f"inventory.gpus must be a list of at most {MAX_GPUS_PER_AGENT} GPUs")
    gpus = []
    for position, gpu in enumerate(gpus_raw):
        where = f"inventory.gpus[{position}]"
        if type(gpu) is not dict:
            raise Unprocessable(f"{where} must be a map")
        healthy = gpu.get("healthy", True)
        if type(healthy) is not bool:
            raise Unprocessable(f"{where}.healthy must be a boolean")
        gpus.append(
            GpuReport(
                index=_int(gpu, "index", where, high=MAX_GPUS_PER_AGENT * 4),
                uuid=_text(gpu, "uuid", where),
                model=canonical_model(_text(gpu, "name", where)),
                memory_total_bytes=_int(gpu, "memory_total_bytes", where, low=1),
                memory_used_bytes=_int(gpu, "memory_used_bytes", where, optional=True) or 0,
                utilization_gpu_pct=_int(
                    gpu, "utilization_gpu_pct", where, optional=True, high=100
                ),
                temperature_c=_int(gpu, "temperature_c", where, optional=True, low=-100, high=200),
                power_mw=_int(gpu, "power_mw", where, optional=True),
                power_limit_mw=_int(gpu, "power_limit_mw", where, optional=True),
                energy_mj=_int(gpu, "energy_mj", where, optional=True),
                healthy=healthy,
                health_reason=_text(gpu, "health_reason", where, optional=True),
            )
        )
    if len({g.uuid for g in gpus}) != len(gpus):
        raise Unprocessable("inventory.gpus lists a GPU UUID twice")
    host_raw = raw.get("host")
    if type(host_raw) is not dict:
        raise Unprocessable("inventory.host must be a map")
    host = HostReport(
        cpu_count=_int(host_raw, "cpu_count", "inventory.host", low=1, high=1 << 16),
        memory_total_bytes=_int(host_raw, "memory_total_bytes", "inventory.host", low=1),
        memory_available_bytes=_int(
            host_raw, "memory_available_bytes", "inventory.host", optional=True
        ),
        disk_free_bytes=_int(host_raw, "disk_free_bytes", "inventory.host", optional=True),
    )
    driver = _text(raw, "driver_version", "inventory", optional=True)
    return Inventory(tuple(sorted(gpus, key=lambda g: g.index)), host, driver)
