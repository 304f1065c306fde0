"""`suanli-agent self-test`: everything the agent needs, checked one by one."""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import stat
import tarfile
from typing import Any

import aiohttp

from agent.config import USERNS_SIZE, AgentSettings
from agent.coordinator_client import CoordinatorClient
from agent.egress.self_check import run_egress_checks
from agent.engine import ContainerSpec, Engine, LimitNotEnforced
from agent.nvml import NvmlSampler
from agent.scratch import scratch_check
from agent.state import AgentState
from shared.errors import SuanliError

Check = tuple[str, bool, str]


async def run_checks(settings: AgentSettings) -> list[Check]:
    results: list[Check] = []
    state = AgentState(settings.state_dir)
    key = None
    try:
        key = state.load_key()
        mode = stat.S_IMODE(state.key_path.stat().st_mode)
        results.append(
            ("key", True, f"{state.key_path} mode {mode:04o}, agent {key.public.agent_id[:16]}…")
        )
    except (SuanliError, OSError) as exc:
        results.append(("key", False, str(exc)))
    urls: list[str] | None
    try:
        enrolment = state.enrolment()
        urls = settings.coordinators or state.coordinator_urls()
        results.append(
            ("enrolment", True, f"provider {enrolment['provider_id']} at {', '.join(urls)}")
        )
    except SuanliError as exc:
        results.append(("enrolment", False, exc.detail))
        urls = settings.coordinators
    if urls and key is not None:
        results.append(await _coordinator(urls, key, settings.ca_file or state_ca(state)))
    results.append(await _engine(settings.engine_socket))
    results.extend(await _job_isolation(settings))
    results.extend(
        await run_egress_checks(
            settings.engine_socket,
            settings.allow_egress,
            settings.egress_block,
            settings.egress_subnet,
            settings.egress_dns,
        )
    )
    results.append(await asyncio.to_thread(_gpus))
    results.append(await asyncio.to_thread(scratch_check, settings))
    ask = settings.ask_per_gpu_hour
    results.append(
        (
            "ask price",
            ask is not None,
            f"¥{ask} per GPU-hour" if ask else "no ask_per_gpu_hour: the agent offers nothing",
        )
    )
    return results


def state_ca(state: AgentState) -> str | None:
    try:
        value = state.enrolment().get("ca_file")
    except SuanliError:
        return None
    return None if value is None else str(value)


async def _coordinator(urls: list[str], key: Any, ca_file: str | None) -> Check:
    try:
        async with CoordinatorClient(urls, key, ca_file=ca_file, timeout_s=10) as client:
            await client.leases(-1, 0)
        leader = f" (the leader of {len(urls)})" if len(urls) > 1 else ""
        return ("coordinator", True, f"{client.url}{leader} accepts this agent's signed requests")
    except SuanliError as exc:
        return ("coordinator", False, exc.detail)


async def _engine(socket_path: str) -> Check:
    engine = Engine(socket_path)
    try:
        version = await engine.version()
        return (
            "container engine",
            True,
            f"{socket_path}: {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})",
        )
    except (SuanliError, aiohttp.ClientError, OSError) as exc:
        return ("container engine", False, f"{socket_path}: {exc}")
    finally:
        await engine.close()


async def _job_isolation(settings: AgentSettings) -> list[Check]:
    """What keeps a job from the host, as this engine and these settings make it."""
    checks: list[Check] = []
    engine = Engine(settings.engine_socket)
    try:
        mode, sentence = await engine.root_isolation()
        # Docker without userns-remap is not a failure (the job runs as a non-root uid) but
        # the operator reads here that a user namespace would be stronger.
        checks.append(("container root", True, f"{mode}: {sentence}"))
    except (SuanliError, aiohttp.ClientError, OSError) as exc:
        checks.append(
            ("container root", False, f"cannot tell whether container root is host root: {exc}")
        )
    finally:
        await engine.close()
    reserve = settings.memory_reserve_bytes
    share = "its GPUs' share of" if settings.memory_by_gpu_share else "all of"
    limits = (
        f"engine log at most {settings.engine_log_max_bytes} bytes per job; read-only "
        f"root filesystem with tmpfs /scratch <= {settings.scratch_bytes} and /tmp <= "
        f"{settings.tmp_bytes} bytes inside the memory limit; memory at most "
        f"{share} host memory less {reserve} bytes"
    )
    problem = await _probe_limits(settings)
    checks.append(
        ("job limits", problem is None, limits if problem is None else f"NOT BOUNDED: {problem}")
    )
    allow = settings.registry_allow
    policy = "any registry host" if allow is None else f"only {', '.join(allow) or 'none'}"
    if settings.registry_refuse_private:
        policy += "; loopback, link-local and private hosts refused"
    else:
        policy += "; private hosts NOT refused (registry_refuse_private = false)"
    if allow is None:
        policy += (
            "; the engine's redirects and DNS answers after the check are not: an "
            "allow-list or an egress rule for the engine closes that"
        )
    checks.append(("registry policy", True, policy))
    return checks


PROBE_IMAGE = "suanli-agent/self-test-probe:1"


def _probe_rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        entry = tarfile.TarInfo("probe")
        entry.size = 0
        tar.addfile(entry, io.BytesIO(b""))
    return buffer.getvalue()


async def _probe_limits(settings: AgentSettings) -> str | None:
    """Create (never start) a container bounded as a job's is, from a one-file image, and
    let Engine.create compare what the engine applied; None when every bound is in place."""
    engine = Engine(settings.engine_socket)
    try:
        await engine.import_rootfs(_probe_rootfs(), PROBE_IMAGE)
        spec = ContainerSpec(
            name=f"suanli-self-test-{secrets.token_hex(4)}",
            image=PROBE_IMAGE,
            command=["/probe"],
            cpus_milli=100,
            memory_bytes=64 << 20,
            pids_limit=16,
            read_only_rootfs=True,
            tmpfs={"/scratch": 8 << 20, "/tmp": 4 << 20},
            log_max_bytes=settings.engine_log_max_bytes,
            userns_host_id=settings.userns_host_id,
            userns_size=USERNS_SIZE,
        )
        await engine.remove(await engine.create(spec), force=True)
        return None
    except LimitNotEnforced as exc:
        return exc.detail
    except (SuanliError, aiohttp.ClientError, OSError) as exc:
        return f"the engine could not create a bounded probe container: {exc}"
    finally:
        with contextlib.suppress(SuanliError, aiohttp.ClientError, OSError):
            await engine.remove_image(PROBE_IMAGE)
        await engine.close()


def _gpus() -> Check:
    with NvmlSampler() as sampler:
        samples = sampler.sample()
        if not samples:
            return ("GPUs", False, sampler.note or "NVML reports no GPUs")
        unhealthy = [s for s in samples if not s.healthy]
        detail = f"{len(samples)} GPUs, driver {sampler.driver_version}"
        if unhealthy:
            detail += (
                f"; unhealthy: {', '.join(f'#{s.index} {s.health_reason}' for s in unhealthy)}"
            )
        return ("GPUs", not unhealthy, detail)
