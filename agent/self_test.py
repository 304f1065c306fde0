"""`suanli-agent self-test`: everything the agent needs, checked one by one."""

from __future__ import annotations

import asyncio
import stat
from typing import Any

import aiohttp

from agent.config import AgentSettings
from agent.coordinator_client import CoordinatorClient
from agent.engine import Engine
from agent.nvml import NvmlSampler
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
        results.append(("key", True, f"{state.key_path} mode {mode:04o}, agent {key.public.agent_id[:16]}…"))
    except (SuanliError, OSError) as exc:
        results.append(("key", False, str(exc)))
    try:
        enrolment = state.enrolment()
        url = settings.coordinator_url or enrolment["coordinator_url"]
        results.append(("enrolment", True, f"provider {enrolment['provider_id']} at {url}"))
    except SuanliError as exc:
        results.append(("enrolment", False, exc.detail))
        url = settings.coordinator_url
    if url and key is not None:
        results.append(await _coordinator(url, key, settings.ca_file or state_ca(state)))
    results.append(await _engine(settings.engine_socket))
    results.append(await asyncio.to_thread(_gpus))
    ask = settings.ask_per_gpu_hour
    results.append(("ask price", ask is not None,
                    f"¥{ask} per GPU-hour" if ask else "no ask_per_gpu_hour: the agent offers nothing"))
    return results


def state_ca(state: AgentState) -> str | None:
    try:
        value = state.enrolment().get("ca_file")
    except SuanliError:
        return None
    return None if value is None else str(value)


async def _coordinator(url: str, key: Any, ca_file: str | None) -> Check:
    try:
        async with CoordinatorClient(url, key, ca_file=ca_file, timeout_s=10) as client:
            await client.leases(-1, 0)
        return ("coordinator", True, f"{url} accepts this agent's signed requests")
    except SuanliError as exc:
        return ("coordinator", False, exc.detail)


async def _engine(socket_path: str) -> Check:
    engine = Engine(socket_path)
    try:
        version = await engine.version()
        return ("container engine", True, f"{socket_path}: {version.get('Version', '?')} "
                f"(API {version.get('ApiVersion', '?')})")
    except (SuanliError, aiohttp.ClientError, OSError) as exc:
        return ("container engine", False, f"{socket_path}: {exc}")
    finally:
        await engine.close()


def _gpus() -> Check:
    with NvmlSampler() as sampler:
        samples = sampler.sample()
        if not samples:
            return ("GPUs", False, sampler.note or "NVML reports no GPUs")
        unhealthy = [s for s in samples if not s.healthy]
        detail = f"{len(samples)} GPUs, driver {sampler.driver_version}"
        if unhealthy:
            detail += f"; unhealthy: {', '.join(f'#{s.index} {s.health_reason}' for s in unhealthy)}"
        return ("GPUs", not unhealthy, detail)
