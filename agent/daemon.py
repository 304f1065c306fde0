"""`suanli-agent run`: heartbeats, lease polling, containers, metering and the receipt spool.

The daemon keeps going through coordinator restarts and network blips: every exchange is
retried with backoff, containers keep running, receipts wait in the spool. A restart of
the agent re-adopts its containers by label and continues each lease's receipt chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from agent.backoff import Backoff
from agent.config import AgentSettings
from agent.coordinator_client import CoordinatorClient
from agent.egress import EgressNetwork
from agent.engine import Engine, EngineError
from agent.inventory import heartbeat_inventory
from agent.job_container import LABEL_AGENT, LABEL_LEASE
from agent.lease import LeaseRecord, LeaseTerms
from agent.metering import (
    account_sample,
    billable_from_ms,
    learn_window,
    seal_final_receipt,
    seal_interim_receipt,
)
from agent.nvml import GpuSample, NvmlSampler
from agent.private_images import PrivateImages
from agent.receipt_delivery import deliver_receipts
from agent.relay.channel import channel_of
from agent.reports import StatusReports
from agent.runner import LeaseRunner
from agent.scratch import ScratchVolumes, scratch_at_start, scratch_free
from agent.spool import Spool
from agent.state import AgentState
from shared.clock import now_ms
from shared.http_client import CoordinatorError
from shared.receipts import SealedReceipt

log = logging.getLogger(__name__)


class AgentDaemon:
    def __init__(
        self,
        settings: AgentSettings,
        state: AgentState,
        engine: Engine | None = None,
        sampler: NvmlSampler | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.key = state.load_key()
        self.agent_id = self.key.public.agent_id
        urls = settings.coordinators or state.coordinator_urls()
        self.client = CoordinatorClient(urls, self.key, ca_file=settings.ca_file)
        self.engine = engine or Engine(settings.engine_socket)
        self.egress = EgressNetwork.for_agent(self.engine, settings)
        self.sampler = sampler or NvmlSampler()
        self.spool = Spool(state.spool_path)
        self.private_images = PrivateImages(self.spool, self.engine)
        self.scratch: ScratchVolumes | None = None  # known at start
        self.runners: dict[str, LeaseRunner] = {}
        self._finals: set[asyncio.Task[None]] = set()
        self.contact_until_ms: int | None = None
        self.polled = False
        self.samples: dict[str, GpuSample] = {}
        self.gpu_mode = settings.gpu_mode
        self.lease_version = -1
        self.heartbeat_interval_s = float(settings.heartbeat_interval_s)
        self.last_accepted_ms: dict[str, int] = {}
        self.reports = StatusReports(self.client, self.spool, self.save)

    # -- life cycle ---------------------------------------------------------------------

    async def run(self) -> None:
        await self._prepare()
        tasks = [
            asyncio.create_task(
                self._forever(self._sample_once, self.settings.sample_interval_ms / 1000),
                name="sample",
            ),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._lease_loop(), name="leases"),
            asyncio.create_task(
                self._forever(self._receipt_round, self.settings.receipt_interval_s),
                name="receipts",
            ),
            asyncio.create_task(self.reports.loop(self.runners), name="reports"),
            asyncio.create_task(self._forever(self._enforce_limits, 1.0), name="limits"),
            asyncio.create_task(channel_of(self).run(), name="relay"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.close()

    async def close(self) -> None:
        for runner in self.runners.values():
            if runner.task is not None:
                runner.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner.task
        await self.client.close()
        await self.egress.close()
        await self.engine.close()
        self.sampler.close()
        self.spool.close()

    async def _prepare(self) -> None:
        await asyncio.gather(asyncio.to_thread(self.sampler.open), self.egress.start())
        await self._sample_once()
        if self.gpu_mode == "auto":
            self.gpu_mode = await self._detect_gpu_mode()
        self.scratch = await scratch_at_start(self.settings, self.spool)
        await self._adopt()

    async def _detect_gpu_mode(self) -> str:
        try:
            mode = (await self.engine.info()).gpu_mode
        except EngineError as exc:
            log.warning("container engine not reachable yet: %s", exc.detail)
            return "none"
        if mode == "none" and self.samples:
            log.warning(
                "GPUs found but the engine offers neither the NVIDIA runtime nor CDI; "
                "jobs would not see their GPUs"
            )
        return mode

    async def _adopt(self) -> None:
        """Re-attach to this agent's containers and leases after a restart."""
        records = {r.lease_id: r for r in await asyncio.to_thread(self.spool.leases)}
        try:
            containers = await self.engine.list({LABEL_AGENT: self.agent_id})
        except EngineError as exc:
            log.warning("cannot list containers to re-adopt: %s", exc.detail)
            containers = []
        for container in containers:
            lease_id = (container.get("Labels") or {}).get(LABEL_LEASE)
            record = records.get(lease_id or "")
            if record is None:
                log.warning(
                    "removing container %s of unknown lease %s", container.get("Id"), lease_id
                )
                with contextlib.suppress(EngineError):
                    await self.engine.remove(container["Id"], force=True)
                continue
            record.container.container_id = record.container.container_id or container["Id"]
        for record in records.values():
            run = record.container
            self.last_accepted_ms[record.lease_id] = run.started_at_ms or record.created_at_ms
            for receipt in self.spool.receipts(record.lease_id):
                if receipt.acked_at_ms is not None:
                    self.last_accepted_ms[record.lease_id] = max(
                        self.last_accepted_ms[record.lease_id], receipt.acked_at_ms
                    )
            if run.ended_at_ms is None and (
                run.container_id is not None or run.started_at_ms is None
            ):
                self._start_runner(record)
            else:
                if run.ended_at_ms is None:
                    run.ended_at_ms = now_ms()
                    run.exit_code = -1
                if not record.chain.final_sealed and run.started_at_ms is not None:
                    # its start report may still be unanswered: seal once it is, in the background
                    task = asyncio.create_task(
                        self.seal_final(record), name=f"final {record.lease_id}"
                    )
                    self._finals.add(task)
                    task.add_done_callback(self._finals.discard)
        self.kick_reports()

    async def _forever(self, step: Callable[[], Awaitable[None]], interval_s: float) -> None:
        while True:
            try:
                await step()
            except Exception:  # noqa: BLE001 - a failed round is retried next time
                log.exception("%s failed", getattr(step, "__name__", step))
            await asyncio.sleep(interval_s)

    # -- GPUs ---------------------------------------------------------------------------

    async def _sample_once(self) -> None:
        samples = await asyncio.to_thread(self.sampler.sample)
        self.samples = {s.uuid: s for s in samples if s.uuid}
        for runner in self.runners.values():
            account_sample(runner.record, self.samples)

    def offered_samples(self) -> list[GpuSample]:
        wanted = self.settings.offered_gpus
        return [s for s in self.samples.values() if wanted is None or s.index in wanted]

    def gpus_unavailable(self, record: LeaseRecord) -> str | None:
        offered = {s.uuid: s for s in self.offered_samples()}
        busy = {
            uuid
            for r in self.runners.values()
            if r.record is not record and r.record.container.ended_at_ms is None
            for uuid in r.record.gpu_uuids
        }
        for uuid in record.gpu_uuids:
            if uuid not in offered:
                return f"GPU {uuid} is not offered by this agent"
            if not offered[uuid].healthy:
                return f"GPU {uuid} is unhealthy: {offered[uuid].health_reason}"
            if uuid in busy:
                return f"GPU {uuid} is already leased on this agent"
        return None

    # -- coordinator exchanges ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                sent = now_ms()
                inventory = heartbeat_inventory(
                    self.offered_samples(), self.settings.disk_path, self.sampler.driver_version
                )
                inventory["host"]["egress_allowed"] = self.egress.ready
                inventory["host"]["scratch_free_bytes"] = scratch_free(self.scratch)
                answer = await self.client.heartbeat(self.settings.ask_micro_yuan, inventory)
                timeout = answer.get("heartbeat_timeout_ms")
                if type(timeout) is int and timeout > 0:
                    self.contact_until_ms = sent + timeout
                asked_s = answer.get("heartbeat_interval_ms", 10_000) / 1000
                self.heartbeat_interval_s = min(asked_s, self.settings.heartbeat_interval_s)
                for flag in answer.get("flags", []):
                    log.warning(
                        "the coordinator flags GPU %s: %s", flag.get("gpu_uuid"), flag.get("kind")
                    )
                backoff.reset()
                await asyncio.sleep(self.heartbeat_interval_s)
            except CoordinatorError as exc:
                log.warning("heartbeat failed: %s", exc.detail)
                await backoff.wait(at_most_s=self.heartbeat_interval_s)

    async def _lease_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                answer = await self.client.leases(self.lease_version, 20_000)
                self.lease_version = answer["version"]
                for closed in answer.get("closed") or []:
                    runner = self.runners.get(closed.get("lease_id"))
                    if runner is not None:
                        learn_window(runner.record, closed.get("window"))
                await self._reconcile(answer["leases"])
                self.polled = True
                backoff.reset()
            except CoordinatorError as exc:
                log.warning("lease poll failed: %s", exc.detail)
                await backoff.wait()

    async def _reconcile(self, leases: list[dict[str, Any]]) -> None:
        listed = {lease["lease_id"]: lease for lease in leases}
        for lease_id, lease in listed.items():
            runner = self.runners.get(lease_id)
            if runner is None and lease["desired"] == "run":
                record = LeaseRecord(LeaseTerms.from_wire(lease), created_at_ms=now_ms())
                known = [
                    r
                    for r in await asyncio.to_thread(self.spool.leases, True)
                    if r.lease_id == lease_id
                ]
                if known:
                    continue
                await self.save(record)
                self.last_accepted_ms[lease_id] = record.created_at_ms
                self._start_runner(record)
            elif runner is not None:
                runner.record.terms = replace(runner.record.terms, ends_at_ms=lease["ends_at_ms"])
                runner.refresh_credentials(lease.get("job"))
                learn_window(runner.record, lease.get("window"))
                if lease["desired"] == "stop":
                    runner.request_stop(lease.get("stop_reason") or "stopped by the coordinator")
        for lease_id, runner in self.runners.items():
            if (
                lease_id not in listed
                and runner.record.container.ended_at_ms is None
                and runner.record.container.started_at_ms
            ):
                runner.request_stop("the coordinator no longer lists this lease")

    def _start_runner(self, record: LeaseRecord) -> None:
        runner = LeaseRunner(self, record)
        self.runners[record.lease_id] = runner
        runner.start()

    async def _enforce_limits(self) -> None:
        now = now_ms()
        deadline_ms = self.settings.acceptance_deadline_s * 1000
        for runner in list(self.runners.values()):
            record, started = runner.record, runner.record.container.started_at_ms
            if record.container.ended_at_ms is not None or started is None:
                continue
            ends = record.terms.ends_at_ms
            if ends is not None and now >= ends + 5_000:
                runner.request_stop("the lease has ended")
            elif now - self.last_accepted_ms.get(record.lease_id, started) > deadline_ms:
                runner.request_stop("no receipt was accepted within the acceptance deadline")

    # -- receipts -----------------------------------------------------------------------

    async def _receipt_round(self) -> None:
        for runner in list(self.runners.values()):
            record = runner.record
            billing_now = self.billing_now()
            if (
                billable_from_ms(record) is not None
                and record.container.ended_at_ms is None
                and billing_now is not None
            ):
                await self._spool(record, seal_interim_receipt(record, self.key, billing_now))
        await self.drain_receipts()

    def billing_now(self) -> int | None:
        """Now, or, out of touch with the coordinator, the moment it may have declared this
        agent lost (its leases' windows close there): an interim receipt never claims past it.
        None until a heartbeat and a lease poll since the start have told what still stands."""
        if self.contact_until_ms is None or not self.polled:
            return None
        return min(now_ms(), self.contact_until_ms)

    async def seal_final(self, record: LeaseRecord) -> None:
        if record.chain.final_sealed or record.container.started_at_ms is None:
            await self.save(record)
            return
        await self.start_reported(record)
        if billable_from_ms(record) is None:
            # the coordinator never opened the lease's window: there is nothing to bill
            record.chain.final_sealed = True
            await self.save(record)
            return
        sealed = seal_final_receipt(record, self.key, now_ms())
        await self.save(record)
        await self._spool(record, sealed)
        with contextlib.suppress(Exception):
            await self.drain_receipts()

    async def _spool(self, record: LeaseRecord, sealed: SealedReceipt) -> None:
        """Keep a sealed receipt and the lease's advanced chain, before it is ever sent."""
        receipt = sealed.receipt
        await asyncio.to_thread(
            self.spool.add_receipt, record, receipt.seq, sealed.envelope, sealed.digest, now_ms()
        )

    async def drain_receipts(self) -> int:
        """Send spooled receipts in order; drop only what the coordinator acknowledged."""
        return await deliver_receipts(self.client, self.spool, self.last_accepted_ms)

    # -- status and logs ----------------------------------------------------------------

    def kick_reports(self) -> None:
        self.reports.kick()

    async def start_reported(self, record: LeaseRecord) -> None:
        """Wait until the coordinator has answered the lease's start report (or refused it),
        and a lease poll since this agent started has told which windows closed meanwhile:
        the final receipt is sealed only once billing knows where it began and ended."""
        while (
            record.reporting.status == "" and record.container.started_at_ms is not None
        ) or not self.polled:
            self.kick_reports()
            await asyncio.sleep(0.1)

    async def send_log(self, record: LeaseRecord, data: bytes) -> bool:
        """Ship a chunk of the lease's log; False once the coordinator keeps no more of it."""
        if not data:
            return True
        backoff = Backoff()
        while True:
            try:
                answer = await self.client.log_chunk(
                    record.lease_id, record.reporting.log_offset, data
                )
                break
            except CoordinatorError as exc:
                if exc.status in (404, 409, 422):
                    log.warning("log chunk of %s refused: %s", record.lease_id, exc.detail)
                    return False
                await backoff.wait()
        record.reporting.log_offset += len(data)
        await self.save(record)
        return answer.get("truncated") is not True

    async def save(self, record: LeaseRecord) -> None:
        await asyncio.to_thread(self.spool.save_lease, record)
