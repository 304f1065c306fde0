"""`suanli job exec`, `job cp`, `job port-forward` and `job sessions`: a shell, files and ports
of a running job, relayed by the coordinator to the agent that runs it.

`job exec` exits with the command's exit code (EXIT_NO_CODE when the session ended without
one, the reason on stderr); `job cp` runs `tar` in the job as `kubectl cp` does and unpacks it
here (only plain files, directories and links inside the destination); `job port-forward`
listens on 127.0.0.1 and opens one relayed connection to the job's own 127.0.0.1:PORT for
each connection it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import posixpath
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from coordinator.client import render, safe_untar
from coordinator.client.api import CoordinatorApi
from coordinator.client.arguments import UsageError
from coordinator.client.relay_socket import (
    frames,
    open_session,
    raw_terminal,
    read_stdin,
    send,
    terminal_size,
    write_out,
)
from shared.http_client import CoordinatorError
from shared.messages import relay

EXIT_NO_CODE = 125


def _path(job_id: str, what: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}/{what}"


class Outcome:
    def __init__(self) -> None:
        self.code: int | None = None
        self.reason = ""


async def _pump_input(ws: aiohttp.ClientWebSocketResponse, queue: asyncio.Queue[bytes]) -> None:
    while data := await queue.get():
        await send(ws, relay.Data(relay.CLIENT_SESSION, data, relay.STDIN))
    await send(ws, relay.Eof(relay.CLIENT_SESSION))


async def _run_exec(
    ws: aiohttp.ClientWebSocketResponse,
    stdin: bool,
    output: Callable[[int, bytes], None],
    tty: bool = False,
) -> Outcome:
    outcome = Outcome()
    loop = asyncio.get_running_loop()
    feeding = asyncio.create_task(_pump_input(ws, read_stdin(0, loop))) if stdin else None
    if tty:
        loop.add_signal_handler(signal.SIGWINCH, lambda: _resize(ws))
    try:
        while (frame := await frames(ws)) is not None:
            match frame:
                case relay.Data():
                    output(frame.stream, frame.data)
                case relay.Exit():
                    outcome.code = frame.code
                case relay.Close():
                    outcome.reason = frame.reason
                    break
    finally:
        if tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        if feeding is not None:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeding
        await ws.close()
    return outcome


def _resize(ws: aiohttp.ClientWebSocketResponse) -> None:
    rows, cols = terminal_size()
    asyncio.ensure_future(send(ws, relay.Resize(relay.CLIENT_SESSION, rows, cols)))


async def cmd_exec(api: CoordinatorApi, args: argparse.Namespace) -> int:
    argv = (
        [arg for arg in args.command if arg != "--"] if args.command[:1] == ["--"] else args.command
    )
    if not argv:
        raise UsageError("name the command to run after --, as in: suanli job exec ID -- sh")
    query: dict[str, Any] = {"cmd": argv, "stdin": "true" if args.stdin else "false"}
    if args.tty:
        rows, cols = terminal_size()
        query.update(tty="true", rows=str(rows), cols=str(cols))
    ws = await open_session(api, _path(args.job_id, "exec"), query)
    with raw_terminal(0) if args.tty and args.stdin else contextlib.nullcontext(False):
        outcome = await _run_exec(ws, args.stdin, write_out, tty=args.tty)
    if outcome.code is None:
        said = outcome.reason or "the session ended without the command's exit code"
        print(f"suanli: job {args.job_id}: {_shown(said)}", file=sys.stderr)
        return EXIT_NO_CODE
    if outcome.reason:
        print(f"suanli: job {args.job_id}: {_shown(outcome.reason)}", file=sys.stderr)
    return outcome.code if 0 <= outcome.code <= 255 else EXIT_NO_CODE


def _shown(text: str) -> str:
    """An agent's or a job's words as one terminal line: no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)[:500]


# -- cp -----------------------------------------------------------------------------------


def _split_remote(text: str) -> tuple[str, str]:
    job_id, sep, path = text.partition(":")
    if not sep or not job_id or not path:
        raise UsageError(f"the source must be ID:PATH (a job and a path inside it), got {text!r}")
    return job_id, path


async def cmd_cp(api: CoordinatorApi, args: argparse.Namespace) -> int:
    job_id, remote = _split_remote(args.source)
    remote = posixpath.normpath(remote)
    parent, name = posixpath.split(remote)
    if name in ("", ".", ".."):
        raise UsageError(f"name a file or directory to copy, not {remote!r}")
    target = Path(args.destination)
    query = {"cmd": ["tar", "cf", "-", "-C", parent or "/", name], "stdin": "false"}
    ws = await open_session(api, _path(job_id, "exec"), query)
    holder = target.parent if not target.is_dir() else target
    with tempfile.TemporaryDirectory(dir=holder, prefix=".suanli-cp-") as work:
        archive_path = Path(work) / "copy.tar"
        errors = bytearray()
        with archive_path.open("wb") as archive:

            def output(stream: int, data: bytes) -> None:
                if stream == relay.STDERR:
                    errors.extend(data[: 4096 - len(errors)])
                else:
                    archive.write(data)

            outcome = await _run_exec(ws, False, output)
        if outcome.code != 0:
            said = errors.decode(errors="replace").strip() or outcome.reason or "no reason given"
            raise CoordinatorError(f"copying {remote} out of job {job_id} failed: {_shown(said)}")
        unpacked = Path(work) / "unpacked"
        unpacked.mkdir()
        try:
            safe_untar.unpack(archive_path, unpacked, name, archive_path.stat().st_size)
        except safe_untar.UnsafeArchive as exc:
            raise CoordinatorError(f"copying {remote} out of job {job_id}: {exc.detail}") from None
        placed = target / name if target.is_dir() else target
        if placed.exists() and placed.is_dir():
            raise CoordinatorError(f"{placed} already exists; remove it or name another place")
        os.replace(unpacked / name, placed)
    print(f"copied {job_id}:{remote} to {placed}", file=sys.stderr)
    return 0


# -- port-forward -------------------------------------------------------------------------


def _ports(text: str) -> tuple[int, int]:
    local, sep, remote = text.partition(":")
    if not sep:
        local = remote = text
    try:
        pair = int(local), int(remote)
    except ValueError:
        raise UsageError(f"PORTS is LOCAL:REMOTE or PORT (whole numbers), got {text!r}") from None
    for port in pair:
        if not 1 <= port <= 65535:
            raise UsageError(f"a port is from 1 to 65535, got {port} in {text!r}")
    return pair


async def _forward(
    api: CoordinatorApi,
    job_id: str,
    remote: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        ws = await open_session(api, _path(job_id, "port-forward"), {"port": str(remote)})
    except CoordinatorError as exc:
        print(f"suanli: {exc.detail}", file=sys.stderr)
        writer.close()
        return

    async def upstream() -> None:
        while data := await reader.read(relay.MAX_DATA):
            await send(ws, relay.Data(relay.CLIENT_SESSION, data, relay.STDIN))
        await send(ws, relay.Eof(relay.CLIENT_SESSION))

    feeding = asyncio.create_task(upstream())
    try:
        while (frame := await frames(ws)) is not None:
            if isinstance(frame, relay.Data):
                writer.write(frame.data)
                await writer.drain()
            elif isinstance(frame, relay.Eof | relay.Close):
                if isinstance(frame, relay.Close) and frame.reason:
                    print(f"suanli: port {remote}: {_shown(frame.reason)}", file=sys.stderr)
                break
    except (ConnectionError, CoordinatorError):
        pass
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeding
        await ws.close()
        writer.close()


async def cmd_port_forward(api: CoordinatorApi, args: argparse.Namespace) -> int:
    local, remote = _ports(args.ports)
    await api.job(args.job_id)  # an unknown job is said at once, not at the first connection

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _forward(api, args.job_id, remote, reader, writer)

    server = await asyncio.start_server(accepted, args.address, local)
    bound = server.sockets[0].getsockname()[1]
    print(
        f"forwarding {args.address}:{bound} to port {remote} of job {args.job_id} (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    async with server:
        await server.serve_forever()
    return 0


async def cmd_sessions(api: CoordinatorApi, args: argparse.Namespace) -> int:
    answer = await api.call("GET", _path(args.job_id, "sessions"))
    if args.json:
        render.print_json(answer)
        return 0
    rows = answer.get("sessions") or []
    if not rows:
        print(f"no sessions of job {args.job_id}")
    for row in rows:
        ended = (
            "open"
            if row.get("ended_at_ms") is None
            else f"{row['ended_at_ms'] - row['started_at_ms']} ms"
        )
        print(
            f"{row['id']}  {row['kind']:<5} {ended:>10}  in {row['bytes_in']} B  "
            f"out {row['bytes_out']} B  exit {row.get('exit_code')}  {row['detail']}"
        )
    return 0


def add_commands(actions: Any, leaf: Callable[..., argparse.ArgumentParser]) -> None:
    """`job exec`, `job cp`, `job port-forward` and `job sessions`."""
    run = leaf(
        actions,
        "exec",
        cmd_exec,
        "run a command in a running job; exits with its exit code",
        "Run a command inside a running job's container, as the job's own user.",
    )
    run.add_argument("job_id", metavar="ID")
    run.add_argument("-i", "--stdin", action="store_true", help="pass this terminal's input")
    run.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    cp = leaf(actions, "cp", cmd_cp, "copy a file or directory out of a running job")
    cp.add_argument("source", metavar="ID:PATH")
    cp.add_argument("destination", metavar="LOCAL")
    forward = leaf(
        actions,
        "port-forward",
        cmd_port_forward,
        "reach a port inside a running job from this machine",
        "Listen on LOCAL and relay each connection to REMOTE on the job's own 127.0.0.1\n"
        "(it works with network none too).",
    )
    forward.add_argument("job_id", metavar="ID")
    forward.add_argument("ports", metavar="LOCAL:REMOTE")
    forward.add_argument("--address", default="127.0.0.1", help="where to listen (127.0.0.1)")
    sessions = leaf(actions, "sessions", cmd_sessions, "a job's shells, copies and ports")
    sessions.add_argument("job_id", metavar="ID")
