"""The agent's Prometheus /metrics: GPUs under the DCGM exporter's names, and Suanli's own.

GPU figures are the daemon's latest NVML samples (a scrape never calls NVML), named, unit
for unit and label for label, as NVIDIA's dcgm-exporter names them in its default
counters, so dashboards built for it work unchanged. Receipt figures come from the spool,
so they survive a restart of the agent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.config import metrics_address
from agent.nvml import GpuSample
from agent.xid import XidTally, XidWatcher
from shared import canonical
from shared.envelope import unverified_payload
from shared.errors import SuanliError
from shared.receipts import KIND, Receipt

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

__all__ = ["AgentCollector", "SpoolTallies", "serve_metrics"]

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1 << 20
ENERGY = b"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
# dcgm-exporter's labels, in its order (pci_bus_id is left out: the sampler does not read it).
# Its DCGM_FI_DEV_FB_FREE is left out too: NVML's free memory also excludes the driver's
# reservation, which the sampler does not keep, and a figure under DCGM's name means DCGM's.
DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"]


class SpoolTallies:
    """Counts the spool's receipts by fate and sums the accepted amounts, read-only.

    Amounts are cumulative per lease, so a lease earned what its latest accepted receipt
    says; each such receipt is decoded once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._amounts: dict[str, tuple[int, int]] = {}  # lease -> (seq, amount)

    def read(self) -> tuple[int, int, int, int]:
        """(spooled, accepted, rejected, accepted µ¥)."""
        if not self.path.exists():
            return 0, 0, 0, 0
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            spooled, accepted, rejected = conn.execute(
                "SELECT COUNT(*), COUNT(acked_at_ms), COUNT(rejected_rule) FROM receipts"
            ).fetchone()
            latest = conn.execute(
                "SELECT lease_id, MAX(seq) FROM receipts WHERE acked_at_ms IS NOT NULL "
                "GROUP BY lease_id"
            ).fetchall()
            for lease_id, seq in latest:
                if self._amounts.get(lease_id, (-1, 0))[0] == seq:
                    continue
                (envelope,) = conn.execute(
                    "SELECT envelope FROM receipts WHERE lease_id = ? AND seq = ?", (lease_id, seq)
                ).fetchone()
                payload = canonical.decode(unverified_payload(envelope, KIND))
                self._amounts[lease_id] = (seq, Receipt.from_payload(payload).amount)
        finally:
            conn.close()
        earned = sum(amount for _, amount in self._amounts.values())
        return int(spooled), int(accepted), int(rejected), earned


class AgentCollector(Collector):
    def __init__(
        self, daemon: AgentDaemon, xids: XidWatcher, spool: SpoolTallies, hostname: str
    ) -> None:
        self.daemon = daemon
        self.xids = xids
        self.spool = spool
        self.hostname = hostname
        self.spool_figures = (0, 0, 0, 0)  # refreshed off the event loop before each scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._gpus()
        yield from self._own()

    def _gpus(self) -> Iterator[Metric]:
        samples = sorted(self.daemon.samples.values(), key=lambda s: s.index)
        tallies = self.xids.tallies()
        families: dict[str, GaugeMetricFamily | _RawCounter] = {
            "util": GaugeMetricFamily(
                "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=DCGM_LABELS
            ),
            "fb_used": GaugeMetricFamily(
                "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=DCGM_LABELS
            ),
            "temp": GaugeMetricFamily(
                "DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=DCGM_LABELS
            ),
            "power": GaugeMetricFamily(
                "DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=DCGM_LABELS
            ),
            "energy": _RawCounter(
                ENERGY.decode(),
                "Total energy consumption since boot (in mJ).",
                labels=DCGM_LABELS,
            ),
            "xid": GaugeMetricFamily(
                "DCGM_FI_DEV_XID_ERRORS",
                "Value of the last XID error encountered.",
                labels=DCGM_LABELS,
            ),
        }
        xid_count = CounterMetricFamily(
            "suanli_agent_xid_errors",
            "Critical XID errors NVML reported since the agent started",
            labels=["gpu", "UUID"],
        )
        healthy = GaugeMetricFamily(
            "suanli_agent_gpu_healthy", "1 when the GPU is fit to lease", labels=["gpu", "UUID"]
        )
        for sample in samples:
            labels = self._labels(sample)
            tally = tallies.get(sample.uuid or "", XidTally(last=0, count=0))
            figures = {
                "util": sample.utilization_gpu_pct,
                "fb_used": _mib(sample.memory_used_bytes),
                "temp": sample.temperature_c,
                "power": None if sample.power_mw is None else sample.power_mw / 1000,
                "energy": sample.energy_mj,
                "xid": tally.last,
            }
            for name, value in figures.items():
                if value is not None:
                    families[name].add_metric(labels, value)
            xid_count.add_metric([str(sample.index), sample.uuid or ""], tally.count)
            healthy.add_metric([str(sample.index), sample.uuid or ""], int(sample.healthy))
        yield from families.values()
        yield xid_count
        yield healthy

    def _labels(self, sample: GpuSample) -> list[str]:
        return [
            str(sample.index),
            sample.uuid or "",
            f"nvidia{sample.index}",
            sample.name or "",
            self.hostname,
            self.daemon.sampler.driver_version or "",
        ]

    def _own(self) -> Iterator[Metric]:
        note = self.daemon.sampler.note
        yield GaugeMetricFamily(
            "suanli_agent_nvml_up",
            "1 when NVML answers; 0 when it failed (the agent's log says why)",
            value=int(note is None),
        )
        yield GaugeMetricFamily(
            "suanli_agent_gpus", "GPUs NVML reports", value=len(self.daemon.samples)
        )
        yield GaugeMetricFamily(
            "suanli_agent_xid_watched_gpus",
            "GPUs whose critical XID events NVML delivers to the agent",
            value=len(self.xids.watched),
        )
        yield GaugeMetricFamily(
            "suanli_agent_leases_running",
            "Leases whose container is running",
            value=sum(
                1
                for r in self.daemon.runners.values()
                if r.record.container.started_at_ms is not None
                and r.record.container.ended_at_ms is None
            ),
        )
        spooled, accepted, rejected, earned = self.spool_figures
        for name, text, value in (
            ("receipts_spooled", "Receipts signed and kept in the spool", spooled),
            ("receipts_accepted", "Receipts the coordinator acknowledged", accepted),
            ("receipts_rejected", "Receipts the coordinator rejected", rejected),
            ("earned_micro_yuan", "Amount of accepted receipts, in micro-yuan", earned),
            ("heartbeat_failures", "Heartbeats that failed", self.daemon.client.heartbeat_failures),
        ):
            yield CounterMetricFamily(f"suanli_agent_{name}", text, value=value)


class _RawCounter(Metric):
    """A counter under its name as given: dcgm-exporter writes no _total suffix."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "counter")
        self.label_names = labels

    def add_metric(self, values: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self.label_names, values, strict=True)), value)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format, with dcgm-exporter's counter declared under its own name: the client
    library would declare it as ..._total, which its samples are not called."""
    return generate_latest(registry).replace(ENERGY + b"_total ", ENERGY + b" ")


def _mib(value: int | None) -> int | None:
    return None if value is None else value // MIB


@asynccontextmanager
async def serve_metrics(daemon: AgentDaemon) -> AsyncIterator[None]:
    """Watch XIDs and serve GET /metrics from this event loop while the block runs.

    A port already taken (a dcgm-exporter on 9400, say) leaves the agent running without
    metrics and says so: jobs and earnings matter more than their dashboard.
    """
    address = metrics_address(daemon.settings)
    if address is None:
        yield
        return
    xids = XidWatcher()
    xids.start()
    registry = CollectorRegistry(auto_describe=False)
    collector = AgentCollector(daemon, xids, SpoolTallies(daemon.spool.path), socket.gethostname())
    registry.register(collector)

    one_read = asyncio.Lock()  # concurrent scrapes share the spool one at a time

    async def metrics(request: web.Request) -> web.Response:
        try:
            async with one_read:
                collector.spool_figures = await asyncio.to_thread(collector.spool.read)
        except (sqlite3.Error, SuanliError, ValueError) as exc:
            log.warning("metrics: cannot read the receipt spool: %s", exc)
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(client_max_size=1024)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = address
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("metrics at http://%s/metrics", daemon.settings.metrics_listen)
    except OSError as exc:
        log.error(
            "metrics_listen = %r: cannot listen there (%s); no metrics", f"{host}:{port}", exc
        )
    try:
        yield
    finally:
        await runner.cleanup()
        await asyncio.to_thread(xids.stop)
