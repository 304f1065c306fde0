"""`suanli job logs --follow`, `job wait` and `submit --wait/--follow` as processes: against a
real coordinator with an agent that speaks the real protocol, and against a hostile server."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from coordinator_harness import GIB, CoordinatorProcess, FakeAgent, clean_env, free_port

from coordinator.client.follow import (
    EXIT_NO_CODE,
    EXIT_TIMED_OUT,
    MAX_NOTES,
    POLL_S,
    for_terminal,
)

SUANLI = Path(sys.executable).parent / "suanli"
JOB = ["--image", "busybox:latest", "--gpus", "1", "--max-duration", "10m"]
PRICE = ["--max-price-per-gpu-hour", "10"]


class Suanli:
    """`suanli` running, its stdout and stderr read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = ""
        self.stderr = ""

    @classmethod
    async def start(cls, *args: str, url: str, token: str) -> Suanli:
        env = {**clean_env(), "SUANLI_COORDINATOR": url, "SUANLI_TOKEN": token}
        process = await asyncio.create_subprocess_exec(
            str(SUANLI),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def line(self, stream: str, containing: str, timeout_s: float = 30) -> str:
        """The next line on `stream` that contains `containing`; the process keeps running."""
        reader = getattr(self.process, stream)
        assert reader is not None
        while True:
            raw = await asyncio.wait_for(reader.readline(), timeout_s)
            assert raw, f"{stream} closed before {containing!r}; so far: {self.stderr!r}"
            text = raw.decode()
            setattr(self, stream, getattr(self, stream) + text)
            if containing in text:
                return text

    async def finish(self, timeout_s: float = 30) -> int:
        out, err = await asyncio.wait_for(self.process.communicate(), timeout_s)
        self.stdout += out.decode()
        self.stderr += err.decode()
        assert "Traceback" not in self.stderr, self.stderr
        assert self.process.returncode is not None
        return self.process.returncode

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
def coordinator(unhurried_coordinator: CoordinatorProcess) -> CoordinatorProcess:
    """One that waits long enough for an agent's start that a loaded machine's slow follower
    still sees the job leased."""
    return unhurried_coordinator


@pytest.fixture
async def running() -> AsyncIterator[list[Suanli]]:
    started: list[Suanli] = []
    yield started
    for process in started:
        await process.stop()


async def suanli(*args: str, url: str, token: str) -> tuple[int, str, str]:
    process = await Suanli.start(*args, url=url, token=token)
    code = await process.finish()
    return code, process.stdout, process.stderr


async def agent_on(coordinator: CoordinatorProcess, cleanup: list[Any], n: int) -> FakeAgent:
    agent = FakeAgent(coordinator.url, [f"GPU-{n}-0"], 2_000_000, memory=80 * GIB)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(n))
    await agent.heartbeat()
    agent.keep_alive()
    return agent


async def test_a_pending_job_is_said_to_be_pending_and_a_cancel_ends_the_wait(
    coordinator: CoordinatorProcess, running: list[Suanli]
) -> None:
    token = coordinator.add_enterprise(31)
    url = coordinator.url
    code, out, err = await suanli("job", "submit", *JOB, *PRICE, url=url, token=token)
    assert code == 0, err
    job_id = out.strip()
    follower = await Suanli.start("job", "logs", job_id, "--follow", url=url, token=token)
    waiter = await Suanli.start("job", "wait", job_id, url=url, token=token)
    running += [follower, waiter]
    for process in (follower, waiter):
        said = await process.line("stderr", "pending")
        assert said.startswith(f"suanli: job {job_id} is pending: "), said
        assert process.process.returncode is None, "still following"
    code, _, err = await suanli("job", "cancel", job_id, url=url, token=token)
    assert code == 0, err
    for process in (follower, waiter):
        assert await process.finish() == EXIT_NO_CODE
        assert f"suanli: job {job_id} cancelled: cancelled before it was placed" in process.stderr
        notes = [line for line in process.stderr.splitlines() if " is pending: " in line]
        assert len(notes) == len(set(notes)), "each reason said once"
    assert follower.stdout == waiter.stdout == ""


async def test_a_wait_with_a_timeout_gives_up_with_124_and_the_job_goes_on(
    coordinator: CoordinatorProcess,
) -> None:
    token = coordinator.add_enterprise(36)
    url = coordinator.url
    code, out, err = await suanli("job", "submit", *JOB, *PRICE, url=url, token=token)
    assert code == 0, err
    job_id = out.strip()
    for command in (["wait", job_id], ["logs", job_id, "--follow"]):
        code, _, err = await suanli("job", *command, "--timeout", "2s", url=url, token=token)
        assert code == EXIT_TIMED_OUT, err
        assert f"suanli: job {job_id} has not ended after 2s; it goes on" in err, err
    code, out, _ = await suanli("job", "show", job_id, "--json", url=url, token=token)
    assert json.loads(out)["state"] == "pending"
    code, _, err = await suanli("job", "wait", job_id, "--timeout", "5", url=url, token=token)
    assert code == 2 and "--timeout" in err and "unit" in err, err
    code, _, err = await suanli("job", "logs", job_id, "--timeout", "1m", url=url, token=token)
    assert (code, err.strip()) == (2, "suanli: --timeout goes with --follow"), err


async def test_follow_and_wait_exit_with_the_containers_exit_code(
    coordinator: CoordinatorProcess, cleanup: list[Any], running: list[Suanli]
) -> None:
    agent = await agent_on(coordinator, cleanup, 32)
    token = coordinator.add_enterprise(32)
    url = coordinator.url
    follower = await Suanli.start("job", "submit", *JOB, *PRICE, "--follow", url=url, token=token)
    running.append(follower)
    posted = await follower.line("stderr", "posted")
    job_id = posted.split()[2]
    lease = await agent.wait_for_lease()
    assert lease["job_id"] == job_id
    await follower.line("stderr", f"job {job_id} is leased")
    waiter = await Suanli.start("job", "wait", job_id, url=url, token=token)
    running.append(waiter)
    await agent.client.status(lease["lease_id"], "started")
    await agent.client.log_chunk(lease["lease_id"], 0, b"epoch 1 loss 0.5\n")
    assert await follower.line("stdout", "epoch 1") == "epoch 1 loss 0.5\n"
    await agent.client.log_chunk(lease["lease_id"], 17, b"giving up\n")
    await agent.client.status(lease["lease_id"], "exited", exit_code=3)

    assert await follower.finish() == 3
    assert follower.stdout == "epoch 1 loss 0.5\ngiving up\n"
    assert follower.stderr.endswith(
        f"suanli: job {job_id} failed: the container exited with code 3\n"
    )
    assert await waiter.finish() == 3 and waiter.stdout == ""
    code, out, _ = await suanli("job", "wait", job_id, "--json", url=url, token=token)
    assert code == 3 and json.loads(out)["exit_code"] == 3


async def test_a_job_that_failed_before_its_container_ran_exits_125_saying_why(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent = await agent_on(coordinator, cleanup, 33)
    token = coordinator.add_enterprise(33)
    url = coordinator.url
    submitted = asyncio.create_task(
        suanli("job", "submit", *JOB, *PRICE, "--wait", url=url, token=token)
    )
    lease = await agent.wait_for_lease()
    await agent.client.status(
        lease["lease_id"],
        "failed",
        reason_code="image_not_found",
        reason="image busybox:latest was not found in its registry",
    )
    code, out, err = await submitted
    assert code == EXIT_NO_CODE, err
    assert out.splitlines()[0] == lease["job_id"], "the id first, as a plain submit prints it"
    *waiting, line = err.splitlines()
    assert line.startswith(f"suanli: job {lease['job_id']} failed: ") and "not found" in line
    assert all(" is pending: " in note or " is leased: " in note for note in waiting), waiting
    succeeded = asyncio.create_task(
        suanli("job", "submit", *JOB, *PRICE, "--wait", url=url, token=token)
    )
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    await agent.client.status(lease["lease_id"], "exited", exit_code=0)
    code, out, err = await succeeded
    assert code == 0 and all(" is " in note for note in err.splitlines()), err
    assert out.splitlines() == [lease["job_id"], f"job {lease['job_id']} succeeded"]


async def test_an_unknown_job_or_another_enterprises_job_is_refused_in_one_line(
    coordinator: CoordinatorProcess,
) -> None:
    mine = coordinator.add_enterprise(34)
    theirs = coordinator.add_enterprise(35)
    url = coordinator.url
    code, out, err = await suanli("job", "submit", *JOB, *PRICE, url=url, token=theirs)
    assert code == 0, err
    their_job = out.strip()
    for job_id, token in (("job-does-not-exist", mine), (their_job, mine)):
        for command in (["logs", job_id, "--follow"], ["wait", job_id]):
            code, out, err = await suanli("job", *command, url=url, token=token)
            assert code == 1 and out == "", (command, err)
            [line] = err.splitlines()
            assert line.startswith("suanli: ") and job_id in line, line
    code, _, err = await suanli("job", "wait", url=url, token=mine)
    assert code == 2 and "ID" in err
    code, _, err = await suanli(
        "job", "submit", *JOB, *PRICE, "--wait", "--follow", url=url, token=mine
    )
    assert code == 2 and "not allowed with argument" in err


# -- a hostile coordinator ----------------------------------------------------------------


class Hostile:
    """A server that answers the follower's reads as a coordinator never should."""

    def __init__(self, page: dict[str, Any], job: dict[str, Any]) -> None:
        self.page, self.job = page, job
        self.reads = 0
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def logs(self, request: web.Request) -> web.Response:
        self.reads += 1
        offset = int(request.query.get("offset", "0"))
        return web.json_response({**self.page, "offset": offset, "next_offset": offset})

    async def show(self, request: web.Request) -> web.Response:
        self.reads += 1
        # a reason that changes on every read, with a terminal escape in it
        return web.json_response(
            {**self.job, "reason": f"r{self.reads}", "reason_detail": "\x1b[2J"}
        )

    async def __aenter__(self) -> Hostile:
        app = web.Application()
        app.router.add_get("/v1/jobs/{job_id}/logs", self.logs)
        app.router.add_get("/v1/jobs/{job_id}", self.show)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_a_log_page_that_does_not_move_on_is_refused_not_read_again() -> None:
    page = {"job_id": "j", "data": "again", "job_state": "running", "complete": False}
    async with Hostile(page, {"id": "j", "state": "running"}) as server:
        code, out, err = await suanli("job", "logs", "j", "--follow", url=server.url, token="t")
    assert code == 1 and out == ""
    assert err == "suanli: the coordinator's log page for job j does not follow on from byte 0\n"
    assert server.reads == 1


async def test_a_server_that_never_ends_the_job_is_polled_at_a_bounded_pace(
    running: list[Suanli],
) -> None:
    page = {"job_id": "j", "data": "", "job_state": "pending", "complete": False}
    async with Hostile(page, {"id": "j", "state": "pending"}) as server:
        began = time.monotonic()
        follower = await Suanli.start("job", "logs", "j", "--follow", url=server.url, token="t")
        running.append(follower)
        for _ in range(MAX_NOTES):
            await follower.line("stderr", "is pending")
        while server.reads < 2 * (MAX_NOTES + 3):
            await asyncio.sleep(0.2)
        await follower.stop()
        elapsed, reads = time.monotonic() - began, server.reads
    # each round reads the page and the job, then sleeps at least POLL_S
    assert reads <= 2 * (elapsed / POLL_S + 1), (reads, elapsed)
    rest = (await follower.process.stderr.read()).decode() if follower.process.stderr else ""
    said = follower.stderr + rest
    assert said.count("is pending") == MAX_NOTES, said
    assert "\x1b" not in said


async def test_a_coordinator_busy_for_a_moment_is_asked_again_after_a_pause() -> None:
    answers: list[web.Response] = [
        web.json_response(
            {"data": "a\n", "next_offset": 2, "job_state": "running", "complete": False}
        ),
        web.json_response(
            {"error": "unavailable", "detail": "the coordinator is busy"}, status=503
        ),
        web.json_response(
            {"data": "b\n", "next_offset": 4, "job_state": "succeeded", "complete": True}
        ),
    ]
    offsets: list[str] = []

    async def logs(request: web.Request) -> web.Response:
        offsets.append(request.query["offset"])
        return answers.pop(0)

    async def show(request: web.Request) -> web.Response:
        return web.json_response({"id": "j", "state": "succeeded", "exit_code": 0})

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/logs", logs)
    app.router.add_get("/v1/jobs/{job_id}", show)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await suanli(
            "job", "logs", "j", "--follow", url=f"http://127.0.0.1:{port}", token="t"
        )
    finally:
        await runner.cleanup()
    assert (code, out) == (0, "a\nb\n"), err
    assert err == "suanli: the coordinator is busy; trying again for up to 120 s\n"
    assert offsets == ["0", "2", "2"], "the same page asked again, nothing printed twice"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_jobs_escape_sequences_reach_a_terminal_defused_and_a_pipe_as_they_are() -> None:
    hostile = "ok\n\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b1Acarriage\rtab\t\n"
    shown = for_terminal(hostile, _Terminal())
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert shown == "ok\n?]52;c;ZXZpbA==??[2J?1Acarriage\rtab\t\n"
    assert for_terminal(hostile, io.StringIO()) == hostile
