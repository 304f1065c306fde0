"""A shell, files and ports of a running job through the real processes: a coordinator, the real
`suanli-agent run` on Docker and on Podman, and the `suanli` command, relayed over WebSockets
(the agent opens its channel to the coordinator). The attacks are in test_relay_attacks.py,
beside a forwarded port aimed at the agent host's own ports here."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_harness import AgentProcess, until_offered
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess, free_port
from engines import EngineService
from test_live_logs import GPUS, Live

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
        await until_offered(api, agent, len(GPUS))
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


def read_until(fd: int, needles: tuple[bytes, ...], timeout_s: float = 30) -> bytes:
    """What the terminal shows until one of `needles` appears (blocking; run in a thread)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while not any(needle in seen for needle in needles):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        assert ready, f"the terminal never showed {needles!r}; it showed {seen[-500:]!r}"
        try:
            seen += os.read(fd, 4096)
        except OSError:
            break
    return seen


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def test_a_terminal_shows_a_prompt_and_follows_resizes(live: Live) -> None:
    job_id = await running_job(live, "sleep 600")
    master, terminal = os.openpty()
    set_size(terminal, 30, 100)
    process = await asyncio.create_subprocess_exec(
        str(live_suanli()),
        *("job", "exec", "-it", job_id, "--", "sh"),
        env={**live.env(), "TERM": "xterm"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        await asyncio.to_thread(read_until, master, (b"$ ", b"# "))
        os.write(master, b"stty size\n")
        await asyncio.to_thread(read_until, master, (b"30 100",))
        set_size(master, 40, 120)
        process.send_signal(signal.SIGWINCH)
        for _ in range(40):  # the resize travels beside the keystrokes; ask until it has landed
            os.write(master, b"stty size\n")
            if b"40 120" in await asyncio.to_thread(read_until, master, (b"40 120", b"30 100")):
                break
        else:
            raise AssertionError("the terminal's new size never reached the job")
        os.write(master, b"exit 3\n")
        assert await asyncio.wait_for(process.wait(), 30) == 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)


async def start_forward(live: Live, job_id: str, ports: str) -> asyncio.subprocess.Process:
    forward = await live.start("job", "port-forward", job_id, ports)
    assert forward.stderr is not None
    line = await asyncio.wait_for(forward.stderr.readline(), 30)
    assert line.startswith(b"forwarding 127.0.0.1:"), line
    return forward


async def test_port_forward_reaches_a_server_inside_a_network_none_job(live: Live) -> None:
    job_id = await running_job(
        live,
        "mkdir -p /tmp/www && echo hello from inside > /tmp/www/index.html && "
        "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    )
    [container] = live.engine.containers_of(live.agent.agent_id)
    _, inspected = live.engine.request("GET", f"/v1.41/containers/{container['Id']}/json")
    assert json.loads(inspected)["HostConfig"]["NetworkMode"] == "none"
    local = free_port()
    forward = await start_forward(live, job_id, f"{local}:8080")
    host_calls: list[bytes] = []

    async def host_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host_calls.append(await reader.read(100))
        writer.write(b"the provider's host answered\n")
        writer.close()

    host_server = await asyncio.start_server(host_service, "127.0.0.1", 0)
    host_port = host_server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(50):  # httpd starts as the job does
                try:
                    async with http.get(f"http://127.0.0.1:{local}/index.html") as response:
                        body = await response.text()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            assert body == "hello from inside\n"
            pages = await asyncio.gather(
                *(fetch(http, f"http://127.0.0.1:{local}/index.html") for _ in range(3))
            )
            assert pages == ["hello from inside\n"] * 3
        # attack: the agent's host listens on a port; the job's loopback is not the host's
        aimed = free_port()
        at_host = await start_forward(live, job_id, f"{aimed}:{host_port}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", aimed)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
            assert at_host.stderr is not None
            said = await asyncio.wait_for(at_host.stderr.readline(), 30)
            assert f"nothing answers on port {host_port} inside the job".encode() in said, said
        finally:
            at_host.kill()
            await at_host.wait()
        assert host_calls == [], "nothing reached the provider's host"
    finally:
        host_server.close()
        forward.kill()
        await forward.wait()
    rows = await open_and_closed(live, job_id)
    assert {row["kind"] for row in rows} == {"port"}


async def fetch(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return await response.text()


async def open_and_closed(live: Live, job_id: str) -> list[dict[str, Any]]:
    return list(live.coordinator.admin_json("sessions", "--job", job_id)["sessions"])
