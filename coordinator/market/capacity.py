"""What an agent's heartbeat claims, as the market keeps it: the inventory the door decoded
(`shared.messages.agent_protocol.Inventory`), mapped to the market's own records."""

from __future__ import annotations

import msgspec

from shared.gpu_models import canonical_model
from shared.messages import agent_protocol as ap

MAX_GPUS_PER_AGENT = ap.MAX_GPUS_PER_AGENT


# frozen Structs rather than frozen dataclasses: a heartbeat builds one per GPU, and a Struct
# is built in C (a frozen dataclass sets each field through object.__setattr__)
class GpuReport(msgspec.Struct, frozen=True):
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


class HostReport(msgspec.Struct, frozen=True):
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int | None
    disk_free_bytes: int | None
    scratch_free_bytes: int | None = None  # None: the agent offers no scratch
    egress_allowed: bool = False


class Inventory(msgspec.Struct, frozen=True):
    gpus: tuple[GpuReport, ...]
    host: HostReport
    driver_version: str | None


def parse_inventory(report: ap.Inventory) -> Inventory:
    """The market's view of an inventory the door has checked: models by their canonical
    names, unreported memory use as 0, GPUs by index."""
    gpus = [
        GpuReport(
            index=gpu.index,
            uuid=gpu.uuid,
            model=canonical_model(gpu.name),
            memory_total_bytes=gpu.memory_total_bytes,
            memory_used_bytes=gpu.memory_used_bytes or 0,
            utilization_gpu_pct=gpu.utilization_gpu_pct,
            temperature_c=gpu.temperature_c,
            power_mw=gpu.power_mw,
            power_limit_mw=gpu.power_limit_mw,
            energy_mj=gpu.energy_mj,
            healthy=gpu.healthy,
            health_reason=gpu.health_reason,
        )
        for gpu in report.gpus
    ]
    host = report.host
    return Inventory(
        tuple(sorted(gpus, key=lambda g: g.index)),
        HostReport(
            cpu_count=host.cpu_count,
            memory_total_bytes=host.memory_total_bytes,
            memory_available_bytes=host.memory_available_bytes,
            disk_free_bytes=host.disk_free_bytes,
            scratch_free_bytes=host.scratch_free_bytes,
            egress_allowed=host.egress_allowed,
        ),
        report.driver_version,
    )
