"""Benchmark: signed heartbeats from many agents against a real coordinator on loopback.

Starts `suanli-coordinator serve` on a free port with a temporary database, enrols the
agents (each sends its first heartbeat, which registers its GPUs), then offers heartbeats
at a fixed rate (every agent once per interval, spread evenly) from one or more load
processes and reports what the coordinator sustained. It then drives the coordinator, and
a bare aiohttp server that only reads the same body and answers a small msgpack body, at
the highest rate the load generator reaches, to show how close the coordinator is to the
ceiling of the HTTP stack itself. The load generator runs on the same machine and takes
CPU from the server; its own CPU use, and everything else's, is printed alongside. Each
second it also reads the database file to see how far behind the coordinator's writer is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import bench_engines
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the loopback harness lives with the tests

import psycopg
from coordinator_harness import CoordinatorProcess, free_port, inventory

from agent.coordinator_client import CoordinatorClient
from coordinator.storage.postgres import is_postgres_url
from shared import canonical
from shared.http_client import CoordinatorError
from shared.identity import PrivateKey
from shared.signed_request import sign_request

HEARTBEAT = "/v1/agent/heartbeat"
GPUS_PER_AGENT = 8
ASK = 15_000_000  # µ¥ per GPU-hour
ENROL_CONCURRENCY = 128
GOAL_P99_S = 0.250  # at 20,000 agents heartbeating every 10 s
GOAL_AGENTS, GOAL_INTERVAL_S = 20_000, 10.0


@dataclass
class AgentSpec:
    seed: bytes
    uuids: list[str]
    offset_s: float  # where in the interval this agent's heartbeats fall


def _agent_specs(count: int, interval_s: float) -> list[AgentSpec]:
    return [
        AgentSpec(
            os.urandom(32),
            [f"GPU-{n:08x}-0000-4000-8000-{g:012x}" for g in range(GPUS_PER_AGENT)],
            interval_s * n / count,
        )
        for n in range(count)
    ]


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, CoordinatorError):
        return f"{exc.status} {exc.error}" if exc.status else "unreachable"
    return type(exc).__name__


# -- the load generator (one per load process) -------------------------------------------


@dataclass
class PhaseResult:
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # from when it was due to the answer
    lags: list[float] = field(default_factory=list)  # from when it was due to when it was sent
    done_at: list[float] = field(default_factory=list)  # monotonic time of each success
    cpu_s: float = 0.0


class LoadGenerator:
    def __init__(self, specs: list[AgentSpec], connections: int) -> None:
        self.keys = [PrivateKey.from_seed(spec.seed) for spec in specs]
        self.specs = specs
        self.inventories = [inventory(spec.uuids) for spec in specs]
        self.connections = connections

    def _session(self) -> aiohttp.ClientSession:
        """One session for a phase: `connections` connections at most, 30 s a request."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def _clients(self, url: str, session: aiohttp.ClientSession) -> list[CoordinatorClient]:
        return [CoordinatorClient(url, key, session=session) for key in self.keys]

    async def _beat(
        self, client: CoordinatorClient, inv: dict[str, Any], due: float, result: PhaseResult
    ) -> None:
        started = time.monotonic()
        result.lags.append(started - due)
        try:
            await client.heartbeat(ASK, inv)
        except Exception as exc:  # noqa: BLE001 - counted by kind
            result.errors[_error_kind(exc)] += 1
            return
        done = time.monotonic()
        result.ok += 1
        result.latencies.append(done - due)
        result.done_at.append(done)

    async def steady(
        self, url: str, start: float, duration_s: float, interval_s: float, max_in_flight: int
    ) -> PhaseResult:
        """Open loop: each agent heartbeats every interval at its offset, answered or not."""
        result = PhaseResult()
        async with self._session() as session:
            clients = await self._clients(url, session)
            schedule = sorted(range(len(clients)), key=lambda i: self.specs[i].offset_s)
            tasks: set[asyncio.Task[None]] = set()
            end = start + duration_s
            beat = 0
            while True:
                round_start = start + beat * interval_s
                if round_start >= end:
                    break
                for i in schedule:
                    due = round_start + self.specs[i].offset_s
                    if due >= end:
                        break
                    delay = due - time.monotonic()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                    elif result.sent % 32 == 0:
                        await asyncio.sleep(0)  # behind schedule: let launched requests run
                    result.sent += 1
                    if len(tasks) >= max_in_flight:
                        result.errors["shed by the load generator (too many in flight)"] += 1
                        continue
                    task = asyncio.create_task(
                        self._beat(clients[i], self.inventories[i], due, result)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                beat += 1
            if tasks:
                await asyncio.wait(tasks)
        return result

    async def flood(self, url: str, start: float, duration_s: float) -> PhaseResult:
        """Closed loop: `connections` workers, each sending again as soon as it is answered."""
        result = PhaseResult()
        async with self._session() as session:
            clients = await self._clients(url, session)
            end = start + duration_s
            position = 0

            async def worker() -> None:
                nonlocal position
                while (now := time.monotonic()) < end:
                    i = position % len(clients)
                    position += 1
                    result.sent += 1
                    await self._beat(clients[i], self.inventories[i], now, result)

            await asyncio.sleep(max(0.0, start - time.monotonic()))
            await asyncio.gather(*(worker() for _ in range(self.connections)))
        return result


def _load_process(conn: Connection, specs: list[AgentSpec], connections: int) -> None:
    generator = LoadGenerator(specs, connections)
    me = psutil.Process()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            return
        kind, url, start, *rest = command
        cpu_before = sum(me.cpu_times()[:2])
        if kind == "steady":
            result = asyncio.run(generator.steady(url, start, *rest))
        else:
            result = asyncio.run(generator.flood(url, start, *rest))
        result.cpu_s = sum(me.cpu_times()[:2]) - cpu_before
        conn.send(result)


class LoadProcesses:
    """Load processes, each with its share of the agents, driven phase by phase."""

    def __init__(self, specs: list[AgentSpec], procs: int, connections: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for n in range(procs):
            mine, theirs = context.Pipe()
            proc = context.Process(
                target=_load_process,
                args=(theirs, specs[n::procs], max(1, connections // procs)),
                daemon=True,
            )
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("a load process failed to start")

    def run(self, watch: CpuWatch, command: tuple[Any, ...]) -> tuple[PhaseResult, Usage]:
        """Run one phase (command: kind, url, start, *arguments) while `watch` samples."""
        for conn in self.conns:
            conn.send(command)
        _kind, _url, start, duration_s, *_rest = command
        usage = watch.measure(start, duration_s)
        return _merge([conn.recv() for conn in self.conns]), usage

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- the bare server: aiohttp and nothing else ------------------------------------------


def _bare_server(port: int) -> None:
    from aiohttp import web

    answer = canonical.encode({"flags": [], "heartbeat_interval_ms": 10_000, "lease_version": 0})

    async def heartbeat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/msgpack")

    app = web.Application()
    app.router.add_post(HEARTBEAT, heartbeat)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _wait_listening(port: int, proc: multiprocessing.process.BaseProcess) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError("the bare server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bare server did not listen")


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Usage:
    server: float  # % of one core, mean over the phase
    server_peak: float  # the busiest second
    loop: float  # the server's main (event-loop) thread
    machine: float  # every process on the machine, % of one core
    db_lag_s: float | None  # how far the last committed heartbeat is behind, at the end
    db_lag_max_s: float | None
    database: float | None = None  # a private PostgreSQL's processes, % of one core


class CpuWatch:
    """CPU use of the server process, its event-loop thread and the machine over a phase.

    With a database given (either engine) it also reads, each second, how far behind the wall
    clock the newest committed `agents.last_seen_ms` is: the backlog of the coordinator's writer.
    """

    def __init__(self, pid: int, db: str | None = None, database_pids: Sequence[int] = ()) -> None:
        self.process = psutil.Process(pid)
        self.db = db
        self._postgres: psycopg.Connection[Any] | None = None
        self.database = [psutil.Process(p) for p in database_pids]

    def _database_cpu(self) -> dict[int, float]:
        used = {}
        for root in self.database:
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    used[process.pid] = sum(process.cpu_times()[:2])
        return used

    def _times(self) -> tuple[float, float, float]:
        total = sum(self.process.cpu_times()[:2])
        loop = next(
            (
                t.user_time + t.system_time
                for t in self.process.threads()
                if t.id == self.process.pid
            ),
            0.0,
        )
        machine = psutil.cpu_times()
        busy = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
        return total, loop, busy

    def db_lag_s(self) -> float | None:
        if self.db is None:
            return None
        newest = self._newest_heartbeat_ms(self.db)
        return None if newest is None else max(0.0, time.time() - newest / 1000)

    def _newest_heartbeat_ms(self, db: str) -> int | None:
        query = "SELECT MAX(last_seen_ms) FROM agents"
        if is_postgres_url(db):
            if self._postgres is None:
                self._postgres = psycopg.connect(db, autocommit=True)
            row = self._postgres.execute(query).fetchone()
        else:
            with contextlib.closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            ) as conn:
                row = conn.execute(query).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()
            self._postgres = None

    def measure(self, start: float, duration_s: float) -> Usage:
        time.sleep(max(0.0, start - time.monotonic()))
        first = self._times()
        database_first = self._database_cpu()
        began = last = time.monotonic()
        last_total = first[0]
        peak = 0.0
        lags: list[float] = []
        end = start + duration_s
        while (now := time.monotonic()) < end:
            time.sleep(min(1.0, end - now))
            total = self._times()[0]
            now = time.monotonic()
            peak = max(peak, 100 * (total - last_total) / (now - last))
            last_total, last = total, now
            lag = self.db_lag_s()
            if lag is not None:
                lags.append(lag)
        total, loop, machine = self._times()
        database = self._database_cpu()
        wall = time.monotonic() - began
        database_s = sum(c - database_first.get(pid, 0.0) for pid, c in database.items())
        return Usage(
            100 * (total - first[0]) / wall,
            peak,
            100 * (loop - first[1]) / wall,
            100 * (machine - first[2]) / wall,
            lags[-1] if lags else None,
            max(lags, default=None),
            100 * database_s / wall if self.database else None,
        )


def _merge(results: list[PhaseResult]) -> PhaseResult:
    merged = PhaseResult()
    for r in results:
        merged.sent += r.sent
        merged.ok += r.ok
        merged.errors.update(r.errors)
        merged.latencies += r.latencies
        merged.lags += r.lags
        merged.done_at += r.done_at
        merged.cpu_s += r.cpu_s
    return merged


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _errors(result: PhaseResult) -> str:
    if not result.errors:
        return "none"
    return ", ".join(f"{n:,} {kind}" for kind, n in result.errors.most_common(4))


def _in_window(result: PhaseResult, start: float, duration_s: float) -> int:
    return sum(1 for t in result.done_at if start <= t < start + duration_s)


# -- the run ---------------------------------------------------------------------------


async def enrol_all(url: str, token: str, specs: list[AgentSpec]) -> tuple[int, int]:
    """Enrol every agent and send its first heartbeat; returns (enrolled, first beats ok)."""
    limit = asyncio.Semaphore(ENROL_CONCURRENCY)
    enrolled = beaten = 0
    connector = aiohttp.TCPConnector(limit=ENROL_CONCURRENCY)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one(n: int, spec: AgentSpec) -> None:
            nonlocal enrolled, beaten
            async with limit:
                client = CoordinatorClient(url, PrivateKey.from_seed(spec.seed), session=session)
                await client.enrol(token, f"bench-{n:05d}")
                enrolled += 1
                await client.heartbeat(ASK, inventory(spec.uuids))
                beaten += 1

        await asyncio.gather(*(one(n, spec) for n, spec in enumerate(specs)))
    return enrolled, beaten


def _stop(coordinator: CoordinatorProcess, grace_s: float) -> tuple[float, bool]:
    """SIGTERM, then SIGKILL after `grace_s`; returns (seconds taken, whether it was killed).

    The coordinator drains its writer's queue before it exits, so a long backlog shows up
    here as a slow stop.
    """
    process = coordinator.process
    if process is None or process.poll() is not None:
        return 0.0, False
    began = time.monotonic()
    process.terminate()
    try:
        process.wait(timeout=grace_s)
        killed = False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        killed = True
    coordinator.process = None
    return time.monotonic() - began, killed


def _cpu_line(server: str, usage: Usage, load_cpu: float, procs: int) -> str:
    others = max(0.0, usage.machine - usage.server - load_cpu - (usage.database or 0.0))
    database = "" if usage.database is None else f", PostgreSQL {usage.database:5.1f}%"
    return (
        f"{server} {usage.server:5.1f}% (event-loop thread {usage.loop:5.1f}%, busiest "
        f"second {usage.server_peak:5.1f}%), load generator {load_cpu:5.1f}% ({procs} "
        f"process{'es' if procs > 1 else ''}){database}, everything else {others:5.1f}%; "
        f"100% = one core of {os.cpu_count()}"
    )


def _print_coordinator_load(
    usage: Usage, cpu_s: float, seconds: float, procs: int, answered: int
) -> None:
    """The coordinator's CPU over one phase and its database writer's lag."""
    load_cpu = 100 * cpu_s / seconds
    print(f"  CPU              {_cpu_line('coordinator', usage, load_cpu, procs)}")
    # what a heartbeat costs the coordinator does not depend on what else wants the cores
    per = usage.server / 100 * seconds / max(1, answered)
    database = (
        ""
        if usage.database is None
        else f", PostgreSQL {usage.database / 100 * seconds / max(1, answered) * 1e6:,.0f} µs"
    )
    print(f"  per heartbeat    {per * 1e6:,.0f} µs of coordinator CPU{database}")
    print(f"  database writer  {_lag_line(usage)}", flush=True)


def _lag_line(usage: Usage) -> str:
    if usage.db_lag_s is None or usage.db_lag_max_s is None:
        return "no committed heartbeat yet"
    return (
        f"the newest committed heartbeat is {usage.db_lag_s:.1f} s old at the end "
        f"(at most {usage.db_lag_max_s:.1f} s during the phase)"
    )


@dataclass
class BenchRun:
    agents: int
    interval_s: float
    duration_s: float
    flood_s: float
    grace_s: float
    procs: int
    connections: int
    max_in_flight: int
    db: str = bench_engines.SQLITE

    @property
    def offered(self) -> float:
        return self.agents / self.interval_s


def _parse() -> BenchRun:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, help="simulated agents (default 20,000; quick 2,000)")
    parser.add_argument(
        "--interval-s", type=float, help="each agent's heartbeat interval (default 10; quick 1)"
    )
    parser.add_argument(
        "--duration-s", type=float, help="length of the steady phase (default 30; quick 6)"
    )
    parser.add_argument(
        "--flood-s", type=float, help="length of each max-rate phase (default 5; quick 2)"
    )
    parser.add_argument("--load-procs", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="HTTP connections the load generator keeps open, in all",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=4096,
        help="heartbeats a load process may have outstanding before it sheds",
    )
    parser.add_argument(
        "--stop-grace-s",
        type=float,
        help="how long the coordinator may take to stop before it is killed (default 10; quick 3)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 agents at a 1 s interval (the same offered rate), ~20 s",
    )
    bench_engines.add_arguments(parser)
    args = parser.parse_args()
    quick = args.quick
    return BenchRun(
        agents=args.agents or (2_000 if quick else 20_000),
        interval_s=args.interval_s or (1.0 if quick else 10.0),
        duration_s=args.duration_s or (6.0 if quick else 30.0),
        flood_s=args.flood_s or (2.0 if quick else 5.0),
        grace_s=args.stop_grace_s or (3.0 if quick else 10.0),
        procs=args.load_procs,
        connections=args.connections,
        max_in_flight=args.max_in_flight,
        db=bench_engines.choice(args),
    )


@dataclass
class EngineFigures:
    answered: float  # steady phase, answered/s within it
    p99_s: float  # steady phase, from when due
    errors: int
    most: float  # max-rate phase, heartbeats/s

    @property
    def met(self) -> bool:
        return self.p99_s < GOAL_P99_S and self.errors == 0


def coordinator_phases(
    run: BenchRun,
    coordinator: CoordinatorProcess,
    specs: list[AgentSpec],
    load_holder: list[LoadProcesses],
    database_pids: Sequence[int] = (),
) -> EngineFigures:
    """Enrol, then the steady and the max-rate phase."""
    coordinator.start()
    assert coordinator.process is not None
    token = coordinator.add_provider(1, max_hosts=run.agents)
    watch = CpuWatch(coordinator.process.pid, coordinator.db, database_pids)
    try:
        return _phases(run, coordinator, specs, load_holder, token, watch)
    finally:
        watch.close()


def _phases(
    run: BenchRun,
    coordinator: CoordinatorProcess,
    specs: list[AgentSpec],
    load_holder: list[LoadProcesses],
    token: str,
    watch: CpuWatch,
) -> EngineFigures:
    started = time.monotonic()
    enrolled, beaten = asyncio.run(enrol_all(coordinator.url, token, specs))
    setup_s = time.monotonic() - started
    print(
        f"enrol + 1st beat   {enrolled:,} enrolled and {beaten:,} first heartbeats in "
        f"{setup_s:.1f} s ({enrolled / setup_s:,.0f} agents/s, {ENROL_CONCURRENCY} at a time)",
        flush=True,
    )

    load = LoadProcesses(specs, run.procs, run.connections)
    load_holder.append(load)
    start = time.monotonic() + 0.5
    steady, usage = load.run(
        watch, ("steady", coordinator.url, start, run.duration_s, run.interval_s, run.max_in_flight)
    )
    answered = _in_window(steady, start, run.duration_s) / run.duration_s
    print(
        f"steady phase       {run.duration_s:g} s, offered {steady.sent / run.duration_s:,.0f}/s,"
        f" answered {answered:,.0f}/s within it ({answered / run.offered:.1%}); "
        f"{steady.ok:,} ok in all; errors: {_errors(steady)}"
    )
    print(
        f"  latency          p50 {_ms(_q(steady.latencies, 0.5))}   "
        f"p99 {_ms(_q(steady.latencies, 0.99))}   "
        f"max {_ms(max(steady.latencies, default=0))}   (from when due; load generator lag "
        f"p99 {_ms(_q(steady.lags, 0.99))})"
    )
    _print_coordinator_load(
        usage, steady.cpu_s, run.duration_s, run.procs, _in_window(steady, start, run.duration_s)
    )
    p99 = _q(steady.latencies, 0.99)
    print(f"  goal             {_goal_line(run, p99, sum(steady.errors.values()))}", flush=True)

    start = time.monotonic() + 0.3
    flood, usage = load.run(watch, ("flood", coordinator.url, start, run.flood_s))
    most = flood.ok / run.flood_s
    print(
        f"coordinator max    {most:10,.0f} heartbeats/s, closed loop over {run.connections} "
        f"connections; p50 {_ms(_q(flood.latencies, 0.5))}  "
        f"p99 {_ms(_q(flood.latencies, 0.99))}; errors: {_errors(flood)}"
    )
    _print_coordinator_load(usage, flood.cpu_s, run.flood_s, run.procs, flood.ok)

    lag = watch.db_lag_s()
    stop_s, killed = _stop(coordinator, run.grace_s)
    print(
        f"  stop             {'killed after' if killed else 'exited in'} {stop_s:.1f} s (it "
        f"drains the writer's queue first); the newest committed heartbeat was "
        f"{lag if lag is not None else float('nan'):.1f} s old when it was asked to stop",
        flush=True,
    )
    return EngineFigures(answered, p99, sum(steady.errors.values()), most)


def _goal_line(run: BenchRun, p99_s: float, errors: int) -> str:
    met = EngineFigures(0.0, p99_s, errors, 0.0).met
    shape = (
        ""
        if (run.agents, run.interval_s) == (GOAL_AGENTS, GOAL_INTERVAL_S)
        else f" (this run: {run.agents:,} agents at {run.interval_s:g} s, the goal's is "
        f"{GOAL_AGENTS:,} at {GOAL_INTERVAL_S:g} s)"
    )
    return (
        f"p99 {p99_s * 1000:.0f} ms, {errors:,} errors; goal p99 < {GOAL_P99_S * 1000:.0f} ms "
        f"with none: {bench_engines.verdict(met)}{shape}"
    )


def bare_phase(
    run: BenchRun, load: LoadProcesses, bare_holder: list[multiprocessing.process.BaseProcess]
) -> float:
    """The same max-rate phase against a bare aiohttp server; returns its requests/s."""
    port = free_port()
    bare = multiprocessing.get_context("spawn").Process(
        target=_bare_server, args=(port,), daemon=True
    )
    bare.start()
    bare_holder.append(bare)
    _wait_listening(port, bare)
    assert bare.pid is not None
    start = time.monotonic() + 0.3
    ceiling, usage = load.run(
        CpuWatch(bare.pid), ("flood", f"http://127.0.0.1:{port}", start, run.flood_s)
    )
    most = ceiling.ok / run.flood_s
    print(
        f"bare aiohttp max   {most:10,.0f} requests/s, same bodies, same load generator; "
        f"p50 {_ms(_q(ceiling.latencies, 0.5))}  p99 {_ms(_q(ceiling.latencies, 0.99))}; "
        f"errors: {_errors(ceiling)}"
    )
    load_cpu = 100 * ceiling.cpu_s / run.flood_s
    print(f"  CPU              {_cpu_line('bare server', usage, load_cpu, run.procs)}")
    return most


def main() -> None:
    run = _parse()
    began = time.monotonic()
    specs = _agent_specs(run.agents, run.interval_s)
    body = sign_request(
        PrivateKey.from_seed(specs[0].seed),
        "POST",
        HEARTBEAT,
        {"ask_per_gpu_hour": ASK, "inventory": inventory(specs[0].uuids)},
        0,
    )
    print(
        f"setup              {run.agents:,} agents × {GPUS_PER_AGENT} GPUs, one heartbeat "
        f"each per {run.interval_s:g} s = {run.offered:,.0f}/s offered; signed body "
        f"{len(body):,} bytes; {os.cpu_count()} CPUs shared by the server, {run.procs} load "
        f"process(es) and anything else running",
        flush=True,
    )

    load: list[LoadProcesses] = []
    bare: list[multiprocessing.process.BaseProcess] = []
    figures: dict[str, EngineFigures] = {}
    with bench_engines.engines(run.db) as chosen:
        print(f"engines            {chosen.describe()}", flush=True)
        try:
            for engine in chosen.names:
                if len(chosen.names) > 1:
                    bench_engines.heading(engine, 0, 1)
                with tempfile.TemporaryDirectory(prefix="suanli-bench-") as tmp:
                    coordinator = CoordinatorProcess(
                        Path(tmp),
                        settings={
                            "heartbeat_interval_ms": int(run.interval_s * 1000),
                            # enrolment takes a while; no agent may time out before the
                            # steady phase
                            "heartbeat_timeout_ms": 3_600_000,
                        },
                        database=chosen.fresh(engine, Path(tmp)),
                    )
                    try:
                        database_pids = (
                            chosen.postgres_pids() if engine == bench_engines.POSTGRESQL else []
                        )
                        figures[engine] = coordinator_phases(
                            run, coordinator, specs, load, database_pids
                        )
                    finally:
                        _stop(coordinator, 0.0)
                    while len(load) > 1:  # only the last run's load processes stay, for the bare
                        load.pop(0).close()
            print()
            bare_max = bare_phase(run, load[-1], bare)
        finally:
            for processes in load:
                processes.close()
            for process in bare:
                process.terminate()
                process.join(timeout=10)
    for engine, figure in figures.items():
        print(
            f"ratio {bench_engines.label(engine):<12} coordinator max / bare "
            f"{figure.most / bare_max:.2f}; steady answered / bare "
            f"{figure.answered / bare_max:.2f}; "
            f"steady answered / offered {figure.answered / run.offered:.2f}"
        )
    if len(figures) > 1:
        most = {engine: figure.most for engine, figure in figures.items()}
        print(bench_engines.ratio_line("max heartbeats", most, "/s"))
        shown = "; ".join(
            f"{bench_engines.label(engine)} {figure.p99_s * 1000:,.0f} ms, "
            f"{bench_engines.verdict(figure.met)}"
            for engine, figure in figures.items()
        )
        print(f"{'steady p99':<18} {shown} (goal < {GOAL_P99_S * 1000:.0f} ms, no errors)")
    print(f"total              {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
