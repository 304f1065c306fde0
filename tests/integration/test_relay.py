"""A shell, files and ports of a running job through the real processes: a coordinator, the real
`suanli-agent run` on Docker and on Podman, and the `suanli` command, relayed over WebSockets
(the agent opens its channel to the coordinator).

Attacks: another enterprise, a finished job, too many sessions, a client flooding bytes, a
rogue agent's frames and upgrades, and a forwarded port aimed at the agent host's own ports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_harness import AgentProcess
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess, FakeAgent, free_port
from engines import EngineService
from test_live_logs import GPUS, Live

from shared.clock import now_ms
from shared.messages import relay
from shared.signed_request import sign_request

SESSION_BYTES = 8 << 20  # the coordinator's bound on one session, for the flood
AGENT_PATH = "/v1/agent/relay"
SIGNED_HEADER = "X-Suanli-Signed-Request"
SAME_RIGHTS = (
    "for p in 1 self; do grep -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs)' /proc/$p/status; "
    "cat /proc/$p/uid_map; echo --; done"
)


@pytest.fixture
async def live(tmp_path: Path, engine_service: EngineService) -> AsyncIterator[Live]:
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator",
        settings={
            **FAST_SETTINGS,
            "heartbeat_timeout_ms": 15_000,
            "start_deadline_ms": 30_000,
            "relay_session_bytes": SESSION_BYTES,
        },
    )
    coordinator.start()
    agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
    agent.workdir.mkdir()
    api = Api(coordinator.url, coordinator.add_enterprise(41))
    try:
        agent.enroll()
        agent.start()
        for _ in range(150):
            _, market = await api.call("GET", "/v1/market")
            if market.get("models") and market["models"][0]["free"] == len(GPUS):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the agent's GPUs never reached the market:\n{agent.log()}")
        yield Live(coordinator, agent, api, engine_service)
    finally:
        agent.stop()
        coordinator.stop()
        await api.close()
        for container in engine_service.containers_of(agent.agent_id):
            engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def running_job(live: Live, command: str) -> str:
    code, out, err = await live.run(*live.submit_args(command))
    assert code == 0, err
    job_id = out.strip()
    await live.api.wait_for(job_id, lambda job: job["state"] == "running", timeout_s=60)
    return job_id


async def run_with_input(live: Live, data: bytes, *args: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        str(live_suanli()),
        *args,
        env=live.env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(data), 90)
    assert process.returncode is not None and b"Traceback" not in err, err
    return process.returncode, out, err


async def closed_session(live: Live, job_id: str, detail: str) -> dict[str, Any]:
    """The operator's record of a session of the job, once it has been closed (written after)."""
    for _ in range(100):
        listed = live.coordinator.admin_json("sessions", "--job", job_id)["sessions"]
        found = [row for row in listed if row["detail"] == detail and row["ended_at_ms"]]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no closed session {detail!r} among {listed}")


def live_suanli() -> Path:
    from test_live_logs import SUANLI

    return SUANLI


async def test_exec_output_exit_code_stdin_and_cp(live: Live, tmp_path: Path) -> None:
    job_id = await running_job(
        live,
        "mkdir -p /tmp/out/run1 && head -c 3000000 /dev/urandom > /tmp/out/run1/ckpt.bin && "
        "echo done > /tmp/out/notes.txt && sleep 600",
    )
    code, out, err = await live.run("job", "exec", job_id, "--", "echo", "hello from the job")
    assert (code, out) == (0, "hello from the job\n"), err
    code, out, err = await live.run(
        "job", "exec", job_id, "--", "sh", "-c", "echo oops >&2; exit 7"
    )
    assert (code, out, err) == (7, "", "oops\n")
    # the command has the job's own user, user namespace, capabilities and no-new-privileges
    code, out, _ = await live.run("job", "exec", job_id, "--", "sh", "-c", SAME_RIGHTS)
    job_rights, exec_rights, _ = out.split("--\n")
    assert code == 0 and exec_rights == job_rights and "NoNewPrivs:\t1" in exec_rights, out
    assert "CapEff:\t0000000000000000" in exec_rights
    data = os.urandom(2_000_000)
    code, got, err = await run_with_input(live, data, "job", "exec", "-i", job_id, "--", "cat")
    assert code == 0 and got == data, err

    for _ in range(100):  # the job writes its checkpoint as it starts
        code, out, _ = await live.run(
            "job", "exec", job_id, "--", "md5sum", "/tmp/out/run1/ckpt.bin"
        )
        if (
            code == 0
            and (await live.run("job", "exec", job_id, "--", "cat", "/tmp/out/notes.txt"))[0] == 0
        ):
            break
        await asyncio.sleep(0.2)
    in_job = out.split()[0]
    code, _, err = await live.run(
        "job", "cp", f"{job_id}:/tmp/out/run1/ckpt.bin", str(tmp_path / "ckpt.bin")
    )
    assert code == 0, err
    assert hashlib.md5((tmp_path / "ckpt.bin").read_bytes()).hexdigest() == in_job
    (tmp_path / "results").mkdir()
    code, _, err = await live.run("job", "cp", f"{job_id}:/tmp/out", str(tmp_path / "results"))
    assert code == 0, err
    assert (tmp_path / "results/out/notes.txt").read_text() == "done\n"
    assert hashlib.md5((tmp_path / "results/out/run1/ckpt.bin").read_bytes()).hexdigest() == in_job
    code, _, err = await live.run("job", "cp", f"{job_id}:/tmp/absent", str(tmp_path / "x"))
    assert code == 1 and "/tmp/absent" in err and "No such file" in err, err

    code, out, err = await live.run("job", "sessions", job_id)
    assert code == 0 and "echo hello from the job" in out and "tar cf -" in out, err
    cat = await closed_session(live, job_id, "cat")
    assert cat["bytes_in"] == len(data) and cat["bytes_out"] == len(data) and cat["exit_code"] == 0
    assert cat["enterprise_id"] and cat["token_hash"] and cat["ended_at_ms"] >= cat["started_at_ms"]
