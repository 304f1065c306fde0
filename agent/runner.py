"""One lease's container, from pull to exit: start it hardened, watch it, stop it, ship its logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from agent.config import AgentSettings
from agent.egress import EgressNetwork
from agent.engine import (
    Engine,
    EngineError,
    ImageNotFound,
    ImagePullFailed,
    ImageTooLarge,
    LimitNotEnforced,
    RegistryAuthRefused,
)
from agent.host_limits import MIN_JOB_MEMORY_BYTES, host_cpus_milli, job_limits
from agent.job_container import PullProgress, host_memory_bytes, job_spec, job_terms, limits_note
from agent.lease import Failure, JobTerms, LeaseRecord
from agent.log_pump import LogPump
from agent.nvml import GpuSample
from agent.private_images import PrivateImages
from agent.registry_policy import RegistryAddressRefused, RegistryRefused, pull_failed_sentence
from agent.scratch import ScratchUnavailable, ScratchVolumes
from shared.clock import now_ms

log = logging.getLogger(__name__)
# how long a restarted agent waits for the coordinator to send a private image's credentials
# again (its spool never kept them) before it gives the lease back
CREDENTIALS_WAIT_S = 30.0


class LeaseHost(Protocol):
    """What a lease's runner needs of the agent that runs it (the daemon)."""

    @property
    def settings(self) -> AgentSettings: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def egress(self) -> EgressNetwork: ...

    @property
    def private_images(self) -> PrivateImages: ...

    @property
    def agent_id(self) -> str: ...

    @property
    def gpu_mode(self) -> str: ...

    @property
    def samples(self) -> Mapping[str, GpuSample]: ...

    @property
    def scratch(self) -> ScratchVolumes | None: ...

    def gpus_unavailable(self, record: LeaseRecord) -> str | None: ...

    def kick_reports(self) -> None: ...

    async def save(self, record: LeaseRecord) -> None: ...

    async def send_log(self, record: LeaseRecord, data: bytes) -> bool: ...

    async def seal_final(self, record: LeaseRecord) -> None: ...


class LeaseRunner:
    def __init__(self, daemon: LeaseHost, record: LeaseRecord) -> None:
        self.daemon = daemon
        self.record = record
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._pulled = False
        self._credentials = asyncio.Event()

    @property
    def lease_id(self) -> str:
        return self.record.lease_id

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"lease {self.lease_id}")

    def refresh_credentials(self, job: object) -> None:
        """Take the credentials of the lease's job again from a lease poll (a restarted agent
        has none), as long as the image is still to be pulled."""
        terms = self.record.terms
        if terms.job is None or not terms.job.private_image or terms.job.registry_auth:
            return
        fresh = JobTerms.from_wire(job)
        if self._pulled or fresh is None or fresh.registry_auth is None:
            return
        self.record.terms = replace(
            terms, job=replace(terms.job, registry_auth=fresh.registry_auth)
        )
        self._credentials.set()

    async def _credentials_again(self) -> bool:
        """Wait for refresh_credentials, or a stop; True once the credentials are back."""
        stop = asyncio.create_task(self._stop.wait())
        back = asyncio.create_task(self._credentials.wait())
        await asyncio.wait(
            {stop, back}, timeout=CREDENTIALS_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        back.cancel()
        return job_terms(self.record).registry_auth is not None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.record.container.stop_reason = reason
            log.info("stopping lease %s: %s", self.lease_id, reason)
        self._stop.set()

    async def _run(self) -> None:
        record = self.record
        try:
            if record.container.container_id is None:
                if not await self._create_and_start():
                    return
            exit_code = await self._supervise()
            await self._finish(exit_code)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator, never hangs
            log.exception("lease %s failed", self.lease_id)
            if record.container.started_at_ms is None:
                await self._fail("start_failed", f"the agent could not run the job: {exc}")
            else:
                await self._finish(-1)

    async def _create_and_start(self) -> bool:
        daemon, record = self.daemon, self.record
        problem = daemon.gpus_unavailable(record)
        if problem:
            await self._fail("gpus_unavailable", problem)
            return False
        engine, settings = daemon.engine, daemon.settings
        job = job_terms(record)
        image = job.image
        limits = job_limits(
            job.memory_bytes,
            host_memory_bytes(),
            settings.memory_reserve_bytes,
            len(record.gpu_uuids),
            len(daemon.samples),
            settings.memory_by_gpu_share,
            settings.scratch_bytes,
            settings.tmp_bytes,
        )
        if limits.memory_bytes < MIN_JOB_MEMORY_BYTES:
            await self._fail(
                "host_memory_exhausted",
                "this host keeps its memory for itself "
                "and cannot give a job the least a container needs",
            )
            return False
        egress = None
        if job.network == "egress":
            refusal = daemon.egress.refusal()
            if refusal is not None:
                await self._fail("egress_unavailable", refusal)
                return False
            await daemon.egress.refresh_host_addresses()
            egress = daemon.egress.attachment
        if job.private_image and job.registry_auth is None:
            if not await self._credentials_again():
                await self._fail(
                    "registry_auth_missing",
                    "the agent restarted before it pulled the job's private image, and did not "
                    "get the image's credentials again",
                )
                return False
            job = job_terms(record)
        policy = settings.registry_policy
        try:
            policy.check_name(image)
            # an image that needs credentials is pulled with them even when the host has it,
            # and another lease's private image is pulled as if the host lacked it: the
            # registry, not the host's cache, decides whether this job may have it
            if job.registry_auth is not None or not await daemon.private_images.may_use_cached(
                image
            ):
                await policy.check(image)
                await self._pull(image)
            isolation, _ = await engine.root_isolation()
            volume = await self._scratch_volume(job.scratch_bytes)
            await self._note(
                limits_note(limits, isolation, settings.memory_by_gpu_share, job.scratch_bytes)
            )
            spec = job_spec(
                record,
                settings,
                limits,
                agent_id=daemon.agent_id,
                gpu_mode=daemon.gpu_mode,
                host_cpus_milli=host_cpus_milli(),
                egress=egress,
                scratch_volume=volume,
            )
            async with daemon.private_images.creating(image, self.lease_id) as image_id:
                container_id = await engine.create(replace(spec, image=image_id))
            record.container.container_id = container_id
            await daemon.save(record)
            await engine.start(container_id)
        except RegistryRefused as exc:
            # the job's own choice of registry fails the job; a refusal for what the name
            # resolves to reads as any failed pull, so it tells nothing of the provider's DNS
            code = (
                "image_pull_failed"
                if isinstance(exc, RegistryAddressRefused)
                else "registry_refused"
            )
            await self._fail(code, exc.detail)
            return False
        except ScratchUnavailable as exc:  # the host's disk, not the job: it goes elsewhere
            await self._fail(exc.code, exc.detail)
            return False
        except ImageTooLarge as exc:  # the agent's own limit, in its own words
            await self._fail("image_pull_failed", exc.detail)
            return False
        except RegistryAuthRefused as exc:  # the job's credentials, in its registry's words
            log.warning("lease %s: %s", record.lease_id, exc.detail)
            await self._fail(exc.code, exc.detail)
            return False
        except (ImageNotFound, ImagePullFailed) as exc:
            # The engine's words name the provider's addresses, resolvers and proxies.
            log.warning("lease %s: image %s: %s", record.lease_id, image, exc.detail)
            code = "image_not_found" if isinstance(exc, ImageNotFound) else "image_pull_failed"
            await self._fail(
                code,
                pull_failed_sentence(image)
                if code == "image_pull_failed"
                else f"image {image} was not found in its registry, or the "
                "registry refused access to it",
            )
            return False
        except LimitNotEnforced as exc:
            # The provider's engine is at fault, not the job: the coordinator requeues it.
            log.error(
                "lease %s: %s; no job can run safely on this engine", record.lease_id, exc.detail
            )
            await self._fail(exc.code, exc.detail)
            return False
        except EngineError as exc:
            await self._remove_container()
            await self._fail("start_failed", exc.detail)
            return False
        record.container.started_at_ms = now_ms()
        await daemon.save(record)
        daemon.kick_reports()
        return True

    async def _scratch_volume(self, size: int) -> str | None:
        """The mount of the lease's scratch volume, made now; None when the job asks none."""
        if not size:
            return None
        if self.daemon.scratch is None:
            raise ScratchUnavailable("this agent offers no scratch space")
        return str(await asyncio.to_thread(self.daemon.scratch.create, self.lease_id, size))

    async def _remove_scratch(self) -> None:
        scratch = self.daemon.scratch
        if scratch is not None:
            try:
                await asyncio.to_thread(scratch.remove, self.lease_id)
            except ScratchUnavailable as exc:
                log.error("lease %s: its scratch volume stays: %s", self.lease_id, exc.detail)

    async def _pull(self, image: str) -> None:
        """Pull the job's image, with its credentials if it has any, then forget them: they
        serve this one pull."""
        settings, terms = self.daemon.settings, self.record.terms
        job = job_terms(self.record)
        await self._note(f"[suanli] pulling image {image}\n")
        progress = PullProgress()
        held = (
            self.daemon.private_images.credentialed_pull(image, self.lease_id)
            if job.registry_auth is not None
            else contextlib.nullcontext()
        )
        try:
            async with held:
                await self.daemon.engine.pull(
                    image,
                    timeout_s=settings.image_pull_timeout_s,
                    max_bytes=settings.image_max_bytes,
                    progress=progress.add,
                    auth=job.registry_auth,
                )
        finally:
            self._pulled = True
            self.record.terms = replace(terms, job=replace(job, registry_auth=None))
        await self._note(progress.summary(image))

    async def _supervise(self) -> int:
        """Wait for the container to exit, stopping it on request; returns its exit code."""
        engine, container_id = self.daemon.engine, self.record.container.container_id
        assert container_id is not None
        self._log_task = asyncio.create_task(self._ship_logs())
        waiter = asyncio.create_task(engine.wait(container_id))
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            with contextlib.suppress(EngineError):
                await engine.stop(container_id, self.daemon.settings.stop_grace_s)
            exit_code = await waiter
        else:
            stopper.cancel()
            exit_code = waiter.result()
        return int(exit_code)

    async def _finish(self, exit_code: int) -> None:
        """Record the exit, ship the rest of the log and remove the container, then seal the
        final receipt (which may wait for the coordinator to answer the start) and report."""
        daemon, record = self.daemon, self.record
        if record.container.ended_at_ms is None:
            record.container.ended_at_ms = now_ms()
            record.container.exit_code = exit_code
            await daemon.save(record)
        if self._log_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._log_task, timeout=30)
        await self._remove_container()
        await self._remove_scratch()
        await self._remove_private_image()
        if not record.chain.final_sealed:
            await daemon.seal_final(record)
            daemon.kick_reports()

    async def _fail(self, code: str, detail: str) -> None:
        container = self.record.container
        container.failure = Failure(code, detail[:500])
        container.ended_at_ms = container.ended_at_ms or now_ms()
        await self.daemon.save(self.record)
        await self._remove_scratch()
        await self._remove_private_image()
        self.daemon.kick_reports()

    async def _remove_container(self) -> None:
        container_id = self.record.container.container_id
        if container_id is not None:
            with contextlib.suppress(EngineError):
                await self.daemon.engine.remove(container_id, force=True)

    async def _remove_private_image(self) -> None:
        """A private image leaves the host with its lease, so that no job without its
        credentials finds it in the host's cache."""
        job = self.record.terms.job
        if job is not None and job.private_image:
            with contextlib.suppress(EngineError):
                await self.daemon.private_images.release(self.lease_id, job.image)

    async def _note(self, text: str) -> None:
        """A line of the agent's own in the job's log, before the container's output (whose
        offsets _ship_pass counts without these bytes)."""
        reporting = self.record.reporting
        before = reporting.log_offset
        await self.daemon.send_log(self.record, text.encode())
        reporting.note_bytes += reporting.log_offset - before
        await self.daemon.save(self.record)

    async def _ship_logs(self) -> None:
        """Stream the container's output to the coordinator, skipping what was already sent.

        Podman's follow stream may start at "now" and miss what a fast job printed first, so
        when the container has exited the whole log is read once more and the rest shipped.
        """
        try:
            if await self._ship_pass(follow=True):
                await self._ship_pass(follow=False)
        except EngineError as exc:
            log.warning("logs of lease %s: %s", self.record.lease_id, exc.detail)

    async def _ship_pass(self, follow: bool) -> bool:
        """One pass of the log pump; False once no more of the log is wanted."""
        reporting, daemon = self.record.reporting, self.daemon
        container_id = self.record.container.container_id
        assert container_id is not None
        pump = LogPump(
            daemon.engine.logs(container_id, follow=follow),
            lambda chunk: daemon.send_log(self.record, chunk),
            skip=reporting.log_offset - reporting.note_bytes,
            room=daemon.settings.max_job_log_bytes - reporting.log_offset,
        )
        await pump.run()
        return not pump.coordinator_full and pump.room > 0
