"""Attacks on the relay through the real processes, on Docker and on Podman: another
enterprise's token, a finished job, more sessions than the bound, a client flooding bytes, a
client that reads nothing, a rogue agent's frames, and unsigned or replayed agent upgrades."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets

import aiohttp
import pytest
from coordinator_harness import Api, FakeAgent
from test_live_logs import Live
from test_relay import (  # noqa: F401  (live is a fixture)
    AGENT_PATH,
    SESSION_BYTES,
    SIGNED_HEADER,
    closed_session,
    live,
    live_suanli,
    open_and_closed,
    run_with_input,
    running_job,
)

from shared.clock import now_ms
from shared.messages import relay
from shared.signed_request import sign_request


async def test_refusals_other_enterprise_finished_job_and_the_session_bound(live: Live) -> None:
    job_id = await running_job(live, "sleep 600")
    before = await open_and_closed(live, job_id)
    # attack: another enterprise's token, for a job it did not post
    other = live.env() | {"SUANLI_TOKEN": live.coordinator.add_enterprise(42)}
    process = await asyncio.create_subprocess_exec(
        str(live_suanli()),
        *("job", "exec", job_id, "--", "echo", "mine now"),
        env=other,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1 and out == b"" and f"no job {job_id}".encode() in err, err
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {other['SUANLI_TOKEN']}"}
        url = f"{live.coordinator.url}/v1/jobs/{job_id}/exec?cmd=id"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=headers)
        assert refused.value.status == 404
    assert await open_and_closed(live, job_id) == before, "nothing was opened for it"
    assert "relay session" not in live.agent.log()

    # the bound: four sessions at once, the fifth refused with a sentence
    holders = [
        await live.start("job", "exec", job_id, "--", "sh", "-c", f"echo up {n}; sleep 60")
        for n in range(4)
    ]
    try:
        for holder in holders:
            assert holder.stdout is not None
            assert (await asyncio.wait_for(holder.stdout.readline(), 60)).startswith(b"up ")
        code, _, err = await live.run("job", "exec", job_id, "--", "true")
        assert code == 1 and f"job {job_id} already has 4 sessions open" in err, err
    finally:
        for holder in holders:
            holder.kill()
            await holder.wait()
    for _ in range(100):  # the four close as their clients go
        code, out, err = await live.run("job", "exec", job_id, "--", "echo", "room again")
        if code == 0:
            break
        await asyncio.sleep(0.2)
    assert out == "room again\n", err

    # a finished job: nothing to relay to
    code, out, err = await live.run(*live.submit_args("echo done"))
    finished = out.strip()
    await live.api.wait_for(finished, lambda job: job["state"] == "succeeded", timeout_s=60)
    code, _, err = await live.run("job", "exec", finished, "--", "echo", "late")
    assert code == 1 and f"job {finished} is succeeded" in err, err


async def test_a_flood_is_closed_at_the_bound_and_others_go_on(live: Live) -> None:
    """Attack: a client pours bytes into a session; it is closed at the coordinator's bound on
    a session's bytes while another session of the same job carries on."""
    job_id = await running_job(live, "sleep 600")
    other = await live.start(
        "job", "exec", job_id, "--", "sh", "-c", "echo first; sleep 4; echo still here"
    )
    flood = os.urandom(1 << 20) * (SESSION_BYTES // (1 << 20) * 2)
    code, out, err = await run_with_input(
        live, flood, "job", "exec", "-i", job_id, "--", "sh", "-c", "cat > /dev/null"
    )
    assert code == 125 and f"more than {SESSION_BYTES} bytes".encode() in err, err
    said, _ = await asyncio.wait_for(other.communicate(), 60)
    assert other.returncode == 0 and said == b"first\nstill here\n"
    record = await closed_session(live, job_id, "sh -c cat > /dev/null")
    assert SESSION_BYTES < record["bytes_in"] <= SESSION_BYTES + relay.MAX_DATA


def signed_upgrade(agent: FakeAgent, nonce: bytes | None = None) -> dict[str, str]:
    envelope = sign_request(agent.key, "GET", AGENT_PATH, {}, now_ms(), nonce)
    return {SIGNED_HEADER: base64.b64encode(envelope).decode()}


async def test_a_rogue_agents_frames_are_dropped_and_bad_upgrades_refused(live: Live) -> None:
    job_id = await running_job(live, "sleep 600")
    rogue = FakeAgent(live.coordinator.url, ["GPU-0badbad0-0000-4000-8000-000000000001"], 1)
    await rogue.enrol(live.coordinator.add_provider(2))
    url = live.coordinator.url + AGENT_PATH
    victim = await live.start("job", "exec", job_id, "--", "sh", "-c", "sleep 3; echo survived")
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {SIGNED_HEADER: "not base64!"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status == 401
        nonce = secrets.token_bytes(16)
        ws = await http.ws_connect(url, headers=signed_upgrade(rogue, nonce))
        with pytest.raises(aiohttp.WSServerHandshakeError) as replayed:
            await http.ws_connect(url, headers=signed_upgrade(rogue, nonce))
        assert replayed.value.status == 401
        # frames for sessions it was never given (the real agent's included): all dropped
        for number in range(1, 64):
            await ws.send_bytes(relay.encode(relay.Data(number, b"forged output\n")))
            await ws.send_bytes(relay.encode(relay.Exit(number, 0)))
            await ws.send_bytes(relay.encode(relay.Close(number, "forged")))
        await ws.send_bytes(b"\xc1 not a frame")
        out, err = await asyncio.wait_for(victim.communicate(), 60)
        assert victim.returncode == 0 and out == b"survived\n", err
        await ws.close()
    await rogue.close()
    closing = f"relay: agent {rogue.agent_id}'s channel closed; "
    for _ in range(100):
        said = live.coordinator.log()
        if closing in said:
            break
        await asyncio.sleep(0.1)
    dropped = int(said.split(closing)[1].split()[0])
    assert dropped == 3 * 63 + 1, "each forged frame dropped and counted"
    assert said.count("relay: dropped") < 10, "and said at most once a second"


async def test_a_slow_reader_holds_the_command_back(live: Live) -> None:
    """Backpressure end to end: while the client reads nothing, the command in the job is held
    at its writes (the credit window and the sockets' buffers), not buffered without bound."""
    job_id = await running_job(live, "sleep 600")
    writer = await live.start(
        "job",
        "exec",
        job_id,
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 400 ]; do head -c 65536 /dev/zero; i=$((i+1)); "
        "echo $i > /tmp/progress; done",
    )
    try:
        seen = []
        for _ in range(40):
            await asyncio.sleep(0.5)
            code, out, _ = await live.run("job", "exec", job_id, "--", "cat", "/tmp/progress")
            seen.append(int(out) if code == 0 and out.strip() else 0)
            if len(seen) >= 4 and seen[-1] == seen[-4] > 0:
                break
        else:
            raise AssertionError(f"the command was never held back: {seen}")
        held_at = seen[-1] * 65536
        assert writer.returncode is None, "the session is still open, waiting for its reader"
    finally:
        writer.kill()
        await writer.communicate()  # its pipe's reading was paused full: read it to the end
    record = await closed_session(live, job_id, seen_command())
    # what passed the coordinator stayed under the session's bound, so it was not cut: the
    # command was held at its writes (the rest of `held_at` sat in the engine's pipes)
    assert record["bytes_out"] < SESSION_BYTES < 400 * 65536
    print(f"held after {held_at} bytes written, {record['bytes_out']} through the coordinator")


def seen_command() -> str:
    return (
        "sh -c i=0; while [ $i -lt 400 ]; do head -c 65536 /dev/zero; i=$((i+1)); "
        "echo $i > /tmp/progress; done"
    )


async def test_a_session_ends_when_the_token_that_opened_it_is_revoked(live: Live) -> None:
    """Attack: a shell opened with a token that leaks stays open after the token's revocation.
    The coordinator checks every session's right to go on, so it is cut within seconds."""
    token = live.coordinator.add_enterprise(43)
    env = live.env() | {"SUANLI_TOKEN": token}

    async def suanli(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(live_suanli()),
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    submit = await suanli(*live.submit_args("sleep 600"))
    out, err = await asyncio.wait_for(submit.communicate(), 60)
    assert submit.returncode == 0, err
    job_id = out.decode().strip()
    owner = Api(live.coordinator.url, token)
    try:
        await owner.wait_for(job_id, lambda job: job["state"] == "running", timeout_s=60)
    finally:
        await owner.close()
    shell = await suanli("job", "exec", "-i", job_id, "--", "cat")
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write(b"still here\n")
    await shell.stdin.drain()
    assert await asyncio.wait_for(shell.stdout.readline(), 30) == b"still here\n"
    live.coordinator.admin("revoke-token", "--token", token)
    _, err = await asyncio.wait_for(shell.communicate(), 30)  # stdin still open: cut, not ended
    assert shell.returncode == 125 and b"no longer valid" in err, err
