"""Commands run inside a job's container through the engine's exec API, on Docker and Podman:
output, stdin, exit codes, a terminal and its size, and no more rights than the job has."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

from engines import BUSYBOX_IMAGE, engine, engine_service  # noqa: F401  (fixtures)

from agent.engine import FALLBACK_USER, ContainerNotFound, ContainerSpec, Engine
from agent.engine.exec import ExecStream, create_exec, exec_exit_code, resize_exec, start_exec

RUN = secrets.token_hex(4)


@contextlib.asynccontextmanager
async def running(engine: Engine, short: str) -> AsyncIterator[str]:
    spec = ContainerSpec(
        name=f"suanli-exec-{RUN}-{short}",
        image=BUSYBOX_IMAGE,
        command=["sleep", "300"],
        cpus_milli=500,
        memory_bytes=64 << 20,
        pids_limit=64,
        labels={"suanli.test-run": RUN},
        user=FALLBACK_USER,
    )
    container_id = await engine.create(spec)
    try:
        await engine.start(container_id)
        yield container_id
    finally:
        with contextlib.suppress(ContainerNotFound):
            await engine.remove(container_id, force=True)


async def run(
    engine: Engine, container_id: str, argv: list[str], stdin: bytes | None = None
) -> tuple[int | None, bytes, bytes]:
    exec_id = await create_exec(engine, container_id, argv, tty=False, stdin=stdin is not None)
    stream = await start_exec(engine, exec_id, tty=False)
    if stdin is not None:
        await stream.write(stdin)
        stream.end_input()
    out, err = await asyncio.wait_for(collect(stream), 30)
    stream.close()
    return await exec_exit_code(engine, exec_id), out, err


async def collect(stream: ExecStream) -> tuple[bytes, bytes]:
    out, err = b"", b""
    while (piece := await stream.read()) is not None:
        if piece[0] == 2:
            err += piece[1]
        else:
            out += piece[1]
    return out, err


async def test_output_exit_code_and_stdin(engine: Engine) -> None:  # noqa: F811
    async with running(engine, "basic") as container_id:
        assert await run(engine, container_id, ["sh", "-c", "echo out; echo err >&2"]) == (
            0,
            b"out\n",
            b"err\n",
        )
        assert (await run(engine, container_id, ["sh", "-c", "exit 7"]))[0] == 7
        data = bytes(range(256)) * 4096
        code, out, _ = await run(engine, container_id, ["cat"], stdin=data)
        assert code == 0 and out == data


async def test_exec_has_the_jobs_user_and_no_privileges(engine: Engine) -> None:  # noqa: F811
    async with running(engine, "user") as container_id:
        job_user = (await engine.inspect(container_id))["Config"]["User"]
        code, out, _ = await run(
            engine,
            container_id,
            ["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"],
        )
        assert code == 0
        uid, cap, nnp = out.decode().split("\n")[:3]
        assert uid == job_user.split(":")[0] and uid != "0"
        assert cap.split()[1] == "0000000000000000" and nnp.split()[1] == "1"


async def test_a_terminal_and_its_size(engine: Engine) -> None:  # noqa: F811
    async with running(engine, "tty") as container_id:
        exec_id = await create_exec(engine, container_id, ["sh"], tty=True, stdin=True)
        stream = await start_exec(engine, exec_id, tty=True)
        await resize_exec(engine, exec_id, 33, 111)
        await stream.write(b"stty size; exit 5\n")
        seen = b""
        while (piece := await asyncio.wait_for(stream.read(), 30)) is not None:
            seen += piece[1]
        stream.close()
        assert b"33 111" in seen, seen
        assert await exec_exit_code(engine, exec_id) == 5
