"""Run a real coordinator process on loopback, and fake agents that speak its real protocol."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import databases
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.coordinator_client import CoordinatorClient
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt
from shared.uscc import check_character

BIN = Path(sys.executable).parent
GIB = 1 << 30

FAST_SETTINGS = {
    "heartbeat_interval_ms": 500,
    "heartbeat_timeout_ms": 3_000,
    "start_deadline_ms": 3_000,
    "scheduler_interval_ms": 100,
    "long_poll_max_ms": 5_000,
}
# for tests about something other than losses: a loaded 2-core machine cannot make an agent
# look lost or late to start, so the log holds exactly the rounds the test made
UNHURRIED_SETTINGS = {**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000, "start_deadline_ms": 15_000}


def uscc(n: int) -> str:
    prefix = f"9111000010{n:07d}"
    return prefix + check_character(prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CoordinatorProcess:
    workdir: Path
    settings: dict[str, Any] = field(default_factory=lambda: dict(FAST_SETTINGS))
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    process: subprocess.Popen[bytes] | None = None
    database: str | None = None  # a `--db` location; a SQLite file in workdir when None

    @property
    def db(self) -> str:
        return self.database or str(self.workdir / "coordinator.db")

    @property
    def engine(self) -> str:
        return "postgresql" if self.db.startswith("postgresql://") else "sqlite"

    @property
    def log_key_file(self) -> Path:
        return Path(self.settings.get("log_key_file") or f"{self.db}.key")

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows read straight from this coordinator's database, on either engine."""
        return databases.rows(self.db, sql, params)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> CoordinatorProcess:
        if self.engine == "postgresql":
            self.settings.setdefault("log_key_file", str(self.workdir / "coordinator.key"))
        config = self.workdir / "coordinator.toml"
        config.write_text(
            "[coordinator]\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.settings.items())
        )
        log = open(self.workdir / "coordinator.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                BIN / "suanli-coordinator",
                "serve",
                "--db",
                self.db,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--config",
                config,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"coordinator did not listen:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.workdir / "coordinator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                BIN / "suanli-coordinator",
                "admin",
                "--db",
                self.db,
                "--config",
                self._config(),
                *args,
            ],
            capture_output=True,
            text=True,
            check=check,
        )

    def _config(self) -> str:
        config = self.workdir / "coordinator.toml"
        if not config.exists():
            config.write_text("")
        return str(config)

    def admin_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.admin(*args, "--json").stdout)  # type: ignore[no-any-return]

    def add_provider(self, n: int, max_hosts: int = 10) -> str:
        return str(
            self.admin_json(
                "add-provider",
                "--name",
                f"Provider {n}",
                "--uscc",
                uscc(n),
                "--max-hosts",
                str(max_hosts),
            )["enrolment_token"]
        )

    def add_enterprise(self, n: int) -> str:
        return str(
            self.admin_json("add-enterprise", "--name", f"Enterprise {n}", "--uscc", uscc(n))[
                "token"
            ]
        )


def inventory(
    uuids: list[str],
    name: str = "NVIDIA H100 80GB HBM3",
    memory: int = 80 * GIB,
    healthy: bool = True,
) -> dict[str, Any]:
    return {
        "gpus": [
            {
                "index": i,
                "uuid": uuid,
                "name": name,
                "memory_total_bytes": memory,
                "memory_used_bytes": 0,
                "utilization_gpu_pct": 0,
                "healthy": healthy,
            }
            for i, uuid in enumerate(uuids)
        ],
        "host": {"cpu_count": 64, "memory_total_bytes": 512 * GIB},
        "driver_version": "550.54.15",
    }


class FakeAgent:
    """An agent without containers: real key, real signed requests, made-up GPUs."""

    def __init__(self, url: str, uuids: list[str], ask: int | None, **gpu: Any) -> None:
        self.key = PrivateKey.generate()
        self.url = url
        self.client = CoordinatorClient(url, self.key)
        self.uuids = uuids
        self.ask = ask
        self.gpu = gpu
        self.version = -1
        self.heartbeat_errors: list[str] = []  # what keep_alive's heartbeats met

    @property
    def agent_id(self) -> str:
        return self.key.public.agent_id

    async def enrol(self, token: str) -> dict[str, Any]:
        return await self.client.enrol(token, f"host-{self.agent_id[:8]}")

    async def heartbeat(self) -> dict[str, Any]:
        return await self.client.heartbeat(self.ask, inventory(self.uuids, **self.gpu))

    async def leases(self, wait_ms: int = 0) -> list[dict[str, Any]]:
        answer = await self.client.leases(self.version, wait_ms)
        self.version = answer["version"]
        return list(answer["leases"])

    async def wait_for_lease(self, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leases = await self.leases(wait_ms=1000)
            if leases:
                return leases[0]
        raise AssertionError("no lease arrived")

    def keep_alive(self, interval_s: float = 0.3) -> None:
        """Heartbeat in the background until close(), as a live agent would: from a thread of
        its own, so a test that blocks its event loop (an admin command run as a subprocess)
        does not make its agents look silent."""
        self._keep_alive = Heartbeater(self, interval_s)

    async def stop_heartbeats(self) -> None:
        import asyncio

        heartbeater, self._keep_alive = getattr(self, "_keep_alive", None), None
        if heartbeater is not None:
            await asyncio.to_thread(heartbeater.stop)

    async def close(self) -> None:
        await self.stop_heartbeats()
        await self.client.close()


class Heartbeater:
    """An agent's heartbeats every `interval_s`, signed with its key by a client of its own on
    an event loop of its own in a thread; what the heartbeats meet goes to `heartbeat_errors`."""

    def __init__(self, agent: FakeAgent, interval_s: float) -> None:
        import asyncio
        import threading

        self.agent = agent
        self.interval_s = interval_s
        self._loop = asyncio.new_event_loop()
        self._task: Any = None
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio
        import contextlib

        self._task = self._loop.create_task(self._beat())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()

    async def _beat(self) -> None:
        import asyncio

        agent = self.agent
        client = CoordinatorClient(agent.url, agent.key)
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await client.heartbeat(agent.ask, inventory(agent.uuids, **agent.gpu))
                except Exception as exc:  # noqa: BLE001 - a restart in progress; try again
                    agent.heartbeat_errors.append(repr(exc))
        finally:
            await client.close()

    def stop(self) -> None:
        while self._task is None and self._thread.is_alive():
            time.sleep(0.01)
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join()


class Api:
    """A JSON client of the enterprise/auditor API with one token."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.session = aiohttp.ClientSession()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=json_body, data=data, headers=self._headers(headers)
        ) as response:
            return response.status, await response.json(content_type=None)

    async def submit(self, **fields: Any) -> tuple[int, Any]:
        body = {
            "image": "busybox:latest",
            "command": ["true"],
            "gpus": 1,
            "max_duration_s": 600,
            "max_price_per_gpu_hour_micro_yuan": 10_000_000,
            **fields,
        }
        return await self.call("POST", "/v1/jobs", body)

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_for(self, job_id: str, predicate: Any, timeout_s: float = 10) -> dict[str, Any]:
        import asyncio

        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = await self.job(job_id)
            if predicate(job):
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job never reached the expected state: {job}")

    async def close(self) -> None:
        await self.session.close()


async def seller_and_buyer(
    coordinator: CoordinatorProcess,
    cleanup: list[Any],
    uuids: list[str],
    ask: int,
    provider: int = 1,
    enterprise: int = 2,
) -> tuple[FakeAgent, Api]:
    """An enrolled agent heartbeating its GPUs at `ask`, and an enterprise to buy them."""
    agent = FakeAgent(coordinator.url, uuids, ask)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(provider))
    await agent.heartbeat()
    agent.keep_alive()
    api = Api(coordinator.url, coordinator.add_enterprise(enterprise))
    cleanup.append(api)
    return agent, api


@dataclass
class StartedLease:
    """An agent running a two-GPU lease it won, a dearer agent beside it, and the buyer."""

    agent: FakeAgent
    other: FakeAgent
    api: Api
    lease: dict[str, Any]
    job_id: str


def lease_receipt(
    agent: FakeAgent,
    lease: dict[str, Any],
    gpu_ms: int,
    previous: SealedReceipt | None = None,
    *,
    final: bool = False,
    utilization_pct: int = 90,
    issued_at_ms: int | None = None,
    price: int | None = None,
) -> SealedReceipt:
    """The agent's receipt for `gpu_ms` of its lease after `previous` (the first without it),
    issued now unless `issued_at_ms` says, at the lease's price unless `price` says; a final one
    reports exit code 0."""
    price = lease["price_per_gpu_hour"] if price is None else price
    return seal_receipt(
        Receipt(
            lease_id=lease["lease_id"],
            job_id=lease["job_id"],
            agent_id=agent.agent_id,
            seq=previous.receipt.seq + 1 if previous else 1,
            prev=previous.digest if previous else GENESIS_PREV,
            issued_at_ms=time.time_ns() // 1_000_000 if issued_at_ms is None else issued_at_ms,
            gpu_uuids=tuple(lease["gpu_uuids"]),
            gpu_ms=gpu_ms,
            energy_mj=0,
            utilization_pct=utilization_pct,
            peak_memory_bytes=0,
            price_per_gpu_hour=price,
            amount=usage_amount(gpu_ms, price),
            final=final,
            exit_code=0 if final else None,
        ),
        agent.key,
    )


@dataclass
class LeaseAtHand:
    """A started lease with the coordinator it runs on, its agent and its buyer: what a test
    that signs the lease's receipts itself holds."""

    coordinator: CoordinatorProcess
    agent: FakeAgent
    api: Api
    lease: dict[str, Any]
    job_id: str


async def started_lease(
    coordinator: CoordinatorProcess, cleanup: list[Any], price: int
) -> StartedLease:
    import asyncio

    agent = FakeAgent(coordinator.url, ["GPU-r0", "GPU-r1"], price)
    other = FakeAgent(coordinator.url, ["GPU-o0", "GPU-o1"], price + 3_000_000)
    cleanup += [agent, other]
    await agent.enrol(coordinator.add_provider(1))
    await other.enrol(coordinator.add_provider(2))
    await agent.heartbeat()
    await other.heartbeat()
    agent.keep_alive()
    api = Api(coordinator.url, coordinator.add_enterprise(3))
    cleanup.append(api)
    _, job = await api.submit(gpus=2, max_price_per_gpu_hour_micro_yuan=price)
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    await asyncio.sleep(0.2)  # GPU time must fit in the lease's elapsed time
    return StartedLease(agent, other, api, lease, str(job["id"]))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "suanli test coordinator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
