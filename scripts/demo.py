"""The whole Suanli market on one machine, narrated: run by scripts/demo after its set-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from engines import (  # noqa: E402  # noqa: E402
    BUSYBOX_IMAGE,
    EngineService,
    busybox_rootfs,
    missing_binaries,
    start_docker,
    start_podman,
)
from fake_nvml.fixture import FakeGpu, environment, write_config  # noqa: E402

from shared.money import format_money  # noqa: E402
from shared.uscc import check_character  # noqa: E402

BIN = Path(sys.executable).parent
FAKE_NVML = REPO / "tests" / "fake_nvml" / ".build" / "default"
console = Console() if sys.stdout.isatty() else Console(width=120)
GIB = 1 << 30


def uscc(prefix: str) -> str:
    return prefix + check_character(prefix)


COMPANIES = {
    "hangzhou-dc": ("Hangzhou West Lake Datacenter", uscc("91330100MA2H0TX1L")),
    "guiyang-dc": ("Guiyang Big Data Valley Compute", uscc("91520100MA6J7X2K3")),
    "robotics": ("Lingxi Robotics", uscc("91330106MA2KD8Q0X")),
    "biotech": ("Qiantang Biotech", uscc("91330108MA2CFL7N4")),
}


@dataclass
class AgentPlan:
    name: str
    company: str
    gpus: list[FakeGpu]
    ask: str


AGENTS = [
    AgentPlan(
        "hz-h100-01",
        "hangzhou-dc",
        [
            FakeGpu(f"GPU-1f0e6a10-0000-4000-8000-00000000000{i}", power_mw=620_000, util=95)
            for i in range(2)
        ],
        "18.00",
    ),
    AgentPlan(
        "gy-a100-01",
        "guiyang-dc",
        [
            FakeGpu(
                f"GPU-2a0e6a10-0000-4000-8000-00000000000{i}",
                name="NVIDIA A100-SXM4-80GB",
                power_limit_mw=400_000,
                power_mw=330_000,
                util=88,
                cc="8.0",
            )
            for i in range(4)
        ],
        "9.00",
    ),
    # the robotics company also sells its spare L40S: when it buys from itself, no voucher
    AgentPlan(
        "lx-l40s-01",
        "robotics",
        [
            FakeGpu(
                f"GPU-3c0e6a10-0000-4000-8000-00000000000{i}",
                name="NVIDIA L40S",
                memory_total=48 * GIB,
                power_limit_mw=350_000,
                power_mw=280_000,
                util=76,
                cc="8.9",
            )
            for i in range(2)
        ],
        "6.00",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(title: str, text: str = "") -> None:
    console.print()
    console.rule(f"[bold]{title}")
    if text:
        console.print(text)


def run(*argv: object, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            f"demo: {' '.join(map(str, argv[:3]))} failed:\n{result.stderr or result.stdout}"
        )
    return result.stdout


@contextlib.contextmanager
def container_engine(workdir: Path, keep: bool = False) -> Iterator[EngineService]:
    """The demo's own engine, stopped afterwards unless `keep` (the kept market runs on it)."""
    if os.geteuid() != 0:
        raise SystemExit(
            "demo: it starts its own container engine, which needs root; run it as root "
            "(or sudo) on a machine you can use for this"
        )
    kind = next((k for k in ("docker", "podman") if not missing_binaries(k)), None)
    if kind is None:
        raise SystemExit(
            "demo: neither dockerd nor podman is installed; run scripts/install-test-deps as root"
        )
    engine_dir = Path(tempfile.mkdtemp(prefix=f"suanli-demo-{kind}-", dir="/tmp"))
    service = (start_docker if kind == "docker" else start_podman)(engine_dir)
    try:
        service.wait_ready()
        service.import_image(BUSYBOX_IMAGE, busybox_rootfs())
        yield service
    finally:
        if not keep:
            service.stop()


class Coordinator:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "coordinator.db"
        self.config = workdir / "coordinator.toml"
        self.config.write_text(
            "[coordinator]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 15000\n"
            "scheduler_interval_ms = 200\nstart_deadline_ms = 30000\n\n"
            "[vouchers]\npool_total_micro_yuan = 1_000_000_000_000_000\n"
            "per_company_cap_micro_yuan = 5_000_000_000_000\ncoverage_bps = 5000\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "coordinator.log").open("ab")
        self.process = subprocess.Popen(
            [
                BIN / "suanli-coordinator",
                "serve",
                "--db",
                self.db,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--config",
                self.config,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise SystemExit(
            "demo: the coordinator did not start:\n"
            + (self.workdir / "coordinator.log").read_text()
        )

    def admin(self, *args: str) -> dict[str, Any]:
        return dict(
            json.loads(
                run(
                    BIN / "suanli-coordinator",
                    "admin",
                    "--db",
                    self.db,
                    "--config",
                    self.config,
                    *args,
                    "--json",
                )
            )
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def real_gpus() -> list[dict[str, Any]]:
    """The GPUs NVML reports through this machine's own driver (none without one)."""
    result = subprocess.run(
        [BIN / "suanli-agent", "inventory", "--json"], capture_output=True, text=True, check=False
    )
    return list(json.loads(result.stdout)["gpus"]) if result.returncode == 0 else []


class Agent:
    def __init__(
        self, plan: AgentPlan, workdir: Path, engine_socket: Path, real: bool = False
    ) -> None:
        self.plan = plan
        self.real = real
        self.workdir = workdir / plan.name
        self.workdir.mkdir()
        self.nvml_config = self.workdir / "nvml.conf"
        write_config(self.nvml_config, plan.gpus)
        self.env = dict(os.environ) if real else environment(FAKE_NVML, self.nvml_config)
        self.engine_socket = engine_socket
        self.process: subprocess.Popen[bytes] | None = None

    def enroll(self, coordinator: Coordinator, token: str) -> str:
        run(
            BIN / "suanli-agent",
            "enroll",
            "--coordinator",
            coordinator.url,
            "--token",
            token,
            "--state-dir",
            self.workdir / "state",
            "--hostname",
            self.plan.name,
            env=self.env,
        )
        return str(json.loads((self.workdir / "state" / "enrolment.json").read_text())["agent_id"])

    def start(self) -> None:
        config = self.workdir / "agent.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{self.workdir / "state"}"\n'
            f'ask_per_gpu_hour = "{self.plan.ask}"\n'
            f'engine_socket = "{self.engine_socket}"\ngpu_mode = "none"\nheartbeat_interval_s = 1\n'
            "sample_interval_ms = 250\nreceipt_interval_s = 1\nstop_grace_s = 2\n"
        )
        log = (self.workdir / "agent.log").open("ab")
        self.process = subprocess.Popen(
            [BIN / "suanli-agent", "run", "--config", config],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = aiohttp.ClientSession()

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path, headers=self.headers) as response:
            return await response.json()

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(self.url + path, json=body, headers=self.headers) as response:
            answer = await response.json()
            if response.status >= 400:
                raise SystemExit(f"demo: {path} refused: {answer}")
            return answer

    async def close(self) -> None:
        await self.session.close()


def yuan(micro: int | None) -> str:
    return "-" if micro is None else format_money(micro)


async def wait_for_market(client: Client, gpus: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        market = await client.get("/v1/market")
        if sum(row["free"] for row in market.get("models", [])) >= gpus:
            return dict(market)
        await asyncio.sleep(0.2)
    raise SystemExit("demo: the agents' GPUs did not reach the market in 30 s")


def market_table(market: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"the market: {market['agents_online']} agents, "
            f"{market['pflops_bf16']} PFLOPS dense BF16"
        )
    )
    for column in ("GPU model", "GPUs", "free", "memory", "BF16 TFLOPS each", "lowest ask /GPU-h"):
        table.add_column(column)
    for row in market["models"]:
        table.add_row(
            row["model"],
            str(row["gpus"]),
            str(row["free"]),
            f"{row['memory_total_bytes'] // GIB} GiB",
            str(row["tflops_bf16_each"]),
            yuan(row["ask_min_micro_yuan"]),
        )
    return table


async def wait_for_jobs(
    clients: dict[str, Client], jobs: dict[str, tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 90
    shown: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for label, (who, job_id) in jobs.items():
            shown[label] = await clients[who].get(f"/v1/jobs/{job_id}")
        if all(
            job["state"] in ("succeeded", "failed", "cancelled", "lost") for job in shown.values()
        ):
            return shown
        await asyncio.sleep(0.3)
    raise SystemExit(
        f"demo: jobs did not finish in time: {[(j['id'], j['state']) for j in shown.values()]}"
    )


async def settled(
    clients: dict[str, Client], jobs: dict[str, tuple[str, str]], db: Path
) -> dict[str, dict[str, Any]]:
    """Wait until every finished job's final receipt has been accepted and billed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            finals = conn.execute("SELECT COUNT(*) FROM receipts WHERE final = 1").fetchone()[0]
        if finals >= len(jobs):
            break
        await asyncio.sleep(0.3)
    return {
        label: await clients[who].get(f"/v1/jobs/{job_id}") for label, (who, job_id) in jobs.items()
    }


async def demo(args: argparse.Namespace, workdir: Path, engine: EngineService) -> int:
    coordinator = Coordinator(workdir)
    # with a real driver the first host sells this machine's own GPUs; the other two stay fake
    agents = [
        Agent(plan, workdir, engine.socket, real=bool(args.real_gpus) and n == 0)
        for n, plan in enumerate(AGENTS)
    ]
    expected_gpus = sum(len(a.plan.gpus) for a in agents[1:]) + (
        len(args.real_gpus) if args.real_gpus else len(agents[0].plan.gpus)
    )
    try:
        say(
            "1. The coordinator",
            f"one process on SQLite (WAL) at {coordinator.url}; a ¥1,000,000,000 voucher "
            "pool, ¥5,000,000 cap per company, vouchers cover 50% of each charge",
        )
        coordinator.start()
        providers = {}
        for key in ("hangzhou-dc", "guiyang-dc", "robotics"):
            name, code = COMPANIES[key]
            providers[key] = coordinator.admin("add-provider", "--name", name, "--uscc", code)
        tokens = {}
        for key in ("robotics", "biotech"):
            name, code = COMPANIES[key]
            tokens[key] = coordinator.admin("add-enterprise", "--name", name, "--uscc", code)[
                "token"
            ]
        auditor = coordinator.admin("add-auditor", "--name", "City finance bureau")["token"]
        table = Table(title="accounts (tokens are shown once and stored only as hashes)")
        for column in ("company", "USCC (GB 32100 checked)", "role"):
            table.add_column(column)
        for key, (name, code) in COMPANIES.items():
            roles = [
                r
                for r, present in (("provider", key in providers), ("enterprise", key in tokens))
                if present
            ]
            table.add_row(name, code, " + ".join(roles))
        console.print(table)

        say(
            "2. Providers enrol their GPU hosts",
            "each agent makes an Ed25519 key (0600), registers it with a one-time token, "
            "reads its GPUs "
            "through NVML"
            + (
                " (a fake libnvidia-ml here: no GPU on this machine)"
                if not args.real_gpus
                else f" ({agents[0].plan.name} sells this machine's {len(args.real_gpus)} real "
                "GPUs; the other two hosts are simulated)"
            )
            + f" and runs jobs through {engine.kind}",
        )
        for agent in agents:
            agent_id = agent.enroll(coordinator, providers[agent.plan.company]["enrolment_token"])
            agent.start()
            gpus = (
                [gpu["name"] for gpu in args.real_gpus]
                if agent.real
                else [gpu.name for gpu in agent.plan.gpus]
            )
            console.print(
                f"  {agent.plan.name}: agent {agent_id[:16]}…, {len(gpus)}× {gpus[0]}, "
                f"asks ¥{agent.plan.ask}/GPU-hour"
            )
        clients = {
            "robotics": Client(coordinator.url, tokens["robotics"]),
            "biotech": Client(coordinator.url, tokens["biotech"]),
            "auditor": Client(coordinator.url, auditor),
        }
        try:
            console.print(market_table(await wait_for_market(clients["auditor"], expected_gpus)))

            say(
                "3. Enterprises post jobs; sealed-bid reverse auctions place them",
                "lowest ask wins; the price is the second-lowest ask, capped at the job's maximum",
            )
            plans = [
                (
                    "train-h100-or-a100",
                    "biotech",
                    {
                        "gpus": 2,
                        "gpu_models": ["H100", "A100"],
                        "max_price_per_gpu_hour_micro_yuan": 20_000_000,
                    },
                ),
                (
                    "sim-l40s",
                    "robotics",
                    {
                        "gpus": 1,
                        "gpu_models": ["L40S"],
                        "max_price_per_gpu_hour_micro_yuan": 10_000_000,
                    },
                ),
                (
                    "eval-any-gpu",
                    "biotech",
                    {"gpus": 1, "max_price_per_gpu_hour_micro_yuan": 12_000_000},
                ),
            ]
            jobs: dict[str, tuple[str, str]] = {}
            for label, who, fields in plans:
                job = await clients[who].post(
                    "/v1/jobs",
                    {
                        "image": BUSYBOX_IMAGE,
                        "cpus_milli": 500,
                        "memory_bytes": 128 << 20,
                        "max_duration_s": 600,
                        "idempotency_key": f"demo-{label}",
                        "command": [
                            "sh",
                            "-c",
                            f'for i in 1 2 3 4; do echo "{label}: step $i"; sleep 1; done',
                        ],
                        **fields,
                    },
                )
                jobs[label] = (who, job["id"])
                await asyncio.sleep(0.4)
            placed = {
                label: await clients[who].get(f"/v1/jobs/{job_id}")
                for label, (who, job_id) in jobs.items()
            }
            while any(job["state"] == "pending" for job in placed.values()):
                await asyncio.sleep(0.2)
                placed = {
                    label: await clients[who].get(f"/v1/jobs/{job_id}")
                    for label, (who, job_id) in jobs.items()
                }
            names = {}
            for agent in agents:
                names[
                    json.loads((agent.workdir / "state" / "enrolment.json").read_text())["agent_id"]
                ] = agent.plan
            table = Table(title="auction results")
            for column in (
                "job",
                "enterprise",
                "asked for",
                "won by (ask)",
                "price /GPU-h",
                "their max",
            ):
                table.add_column(column)
            for (label, who, fields), job in zip(plans, placed.values(), strict=True):
                winner = names.get(job["agent_id"])
                table.add_row(
                    label,
                    COMPANIES[who][0],
                    f"{fields['gpus']}× {'/'.join(fields.get('gpu_models', ['any']))}",
                    f"{winner.name} (¥{winner.ask})" if winner else "-",
                    yuan(job["price_per_gpu_hour_micro_yuan"]),
                    yuan(fields["max_price_per_gpu_hour_micro_yuan"]),
                )
            console.print(table)

            say(
                "4. Jobs run in hardened containers; agents sign a cumulative receipt every second",
                "unprivileged, all capabilities dropped, no-new-privileges, "
                "CPU/memory/pids limits, no host mounts",
            )
            finished = await wait_for_jobs(clients, jobs)
            billed = await settled(clients, jobs, coordinator.db)
            with sqlite3.connect(coordinator.db) as conn:
                accepted = conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
                rejected = conn.execute("SELECT COUNT(*) FROM receipt_rejections").fetchone()[0]
            log = await clients["biotech"].get(f"/v1/jobs/{jobs['eval-any-gpu'][1]}/logs")
            console.print(
                f"  {accepted} receipts accepted by rule, {rejected} rejected; a job's log:"
            )
            console.print(Panel(log["data"].rstrip() or "(empty)", expand=False))

            say("5. Use first, pay later: each charge split between the voucher and the enterprise")
            table = Table(title="charges")
            for column in (
                "job",
                "state",
                "GPU-time",
                "charged",
                "voucher",
                "deferred (pay later)",
                "note",
            ):
                table.add_column(column)
            for (label, who, fields), job in zip(plans, billed.values(), strict=True):
                note = (
                    "self-dealing: the buyer owns the GPUs, no voucher"
                    if (
                        who == "robotics"
                        and names.get(job["agent_id"], AGENTS[0]).company == "robotics"
                    )
                    else ""
                )
                seconds = (job["ended_at_ms"] or 0) - (job["started_at_ms"] or 0)
                table.add_row(
                    label,
                    finished[label]["state"],
                    f"{fields['gpus']} × {seconds / 1000:.1f} s",
                    yuan(job["charged_micro_yuan"]),
                    yuan(job["voucher_micro_yuan"]),
                    yuan(job["deferred_micro_yuan"]),
                    note,
                )
            console.print(table)
            pool = await clients["auditor"].get("/v1/vouchers/pool")
            console.print(
                f"  public voucher pool {pool['fiscal_year']}: granted {yuan(pool['granted'])}, "
                f"used {yuan(pool['used'])}, remaining {yuan(pool['remaining'])}"
            )

            period = time.strftime("%Y-%m", time.gmtime())
            if args.keep:
                say(
                    "6. The month stays open, so the kept market goes on billing",
                    f"close it later with `suanli-coordinator admin --db {coordinator.db} "
                    f"close-period {period} --early`; usage after a close cannot be posted",
                )
            else:
                say(
                    "6. The month is closed: statements with due dates",
                    "(closed early for the demo: `admin close-period YYYY-MM --early`)",
                )
                closed = coordinator.admin("close-period", period, "--early")
                listing = coordinator.admin("list")
                party_names = {
                    row["id"]: row["name"]
                    for kind in ("providers", "enterprises")
                    for row in listing[kind]
                }
                table = Table(title=f"statements for {period}")
                for column in (
                    "party",
                    "kind",
                    "total",
                    "voucher",
                    "due from the enterprise",
                    "due date",
                ):
                    table.add_column(column)
                for statement in closed["statements"]:
                    table.add_row(
                        party_names.get(statement["party_id"], statement["party_id"]),
                        statement["party_kind"],
                        yuan(statement["total_micro_yuan"]),
                        yuan(statement["voucher_micro_yuan"]),
                        yuan(statement.get("amount_due_micro_yuan"))
                        if statement["party_kind"] == "enterprise"
                        else "-",
                        statement.get("due_date") or "-",
                    )
                console.print(table)
            check = subprocess.run(
                [BIN / "suanli-coordinator", "admin", "--db", str(coordinator.db), "check-ledger"],
                capture_output=True,
                text=True,
                check=False,
            )
            console.print(f"  admin check-ledger: {check.stdout.strip()}")

            audit_ok = await audit(coordinator, workdir, auditor)

            say("Summary")
            console.print(
                f"  {len(agents)} agents, {expected_gpus} GPUs, 3 jobs placed by "
                f"auction and run in {engine.kind}; {accepted} signed receipts accepted; "
                f"ledger {'balanced' if check.returncode == 0 else 'NOT balanced'}; "
                f"audit {'passed' if audit_ok else 'FAILED'}"
            )
            if args.keep:
                keep(coordinator, tokens, auditor, agents, engine, workdir, period)
            return (
                0
                if check.returncode == 0
                and audit_ok
                and all(job["state"] == "succeeded" for job in finished.values())
                else 1
            )
        finally:
            for client in clients.values():
                await client.close()
    finally:
        if not args.keep:
            for agent in agents:
                agent.stop()
            coordinator.stop()


async def audit(coordinator: Coordinator, workdir: Path, auditor_token: str) -> bool:
    say(
        "7. An auditor checks everything, trusting only public keys",
        "suanli audit verify: the signed checkpoint, the Merkle root, every receipt signature "
        "and chain, "
        "every auction replayed, the ledger's balances compared with the log's postings",
    )
    await asyncio.sleep(2.5)  # the coordinator signs a checkpoint of its log every 2 s
    result = subprocess.run(
        [
            BIN / "suanli",
            "audit",
            "verify",
            "--coordinator",
            coordinator.url,
            "--token",
            auditor_token,
            "--state",
            str(workdir / "audit-state.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if "invalid choice" in result.stderr:
        console.print("  (this build has no `suanli audit` yet)")
        return False
    console.print(result.stdout.rstrip() or result.stderr.rstrip())
    return result.returncode == 0


def keep(
    coordinator: Coordinator,
    tokens: dict[str, str],
    auditor: str,
    agents: list[Agent],
    engine: EngineService,
    workdir: Path,
    period: str,
) -> None:
    """What `--keep` leaves running, and the commands that work against it as printed."""
    pids = [p.pid for p in (coordinator.process, *(a.process for a in agents)) if p is not None]
    say(
        "The market keeps running",
        f"the coordinator, {len(agents)} agents and a {engine.kind} engine; "
        f"database {coordinator.db}",
    )
    console.print(f"  export PATH={BIN}:$PATH      # suanli, suanli-agent, suanli-coordinator")
    console.print(f"  export SUANLI_COORDINATOR={coordinator.url}")
    console.print(f"  export SUANLI_TOKEN={tokens['biotech']}      # Qiantang Biotech")
    console.print("  suanli market; suanli job list; suanli account")
    console.print(
        "  suanli job submit --gpus 1 --max-duration 10m --max-price-per-gpu-hour 20 "
        f"--image {BUSYBOX_IMAGE} --follow -- sh -c 'echo hello; sleep 5'"
    )
    console.print(
        f"  suanli audit verify --coordinator {coordinator.url} --token {auditor} "
        f"--state {workdir / 'audit-state.json'}      # the auditor's token"
    )
    console.print(f"  the month {period} is left open: jobs posted now are billed into it")
    console.print(
        f"  stop it all with: kill {' '.join(map(str, pids))} {engine.process.pid}; "
        f"then remove {workdir} and {engine.workdir}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the coordinator running afterwards"
    )
    args = parser.parse_args()
    args.real_gpus = real_gpus()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="suanli-demo-"))
    console.print(
        Panel(
            "Suanli (算力): a city's GPUs as one market, paid by signed receipts and vouchers",
            expand=False,
        )
    )
    try:
        with container_engine(workdir, keep=args.keep) as engine:
            code = asyncio.run(demo(args, workdir, engine))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        f"\ndone in {time.monotonic() - started:.0f} s"
        + ("" if args.keep else "; everything it started is stopped and removed")
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
