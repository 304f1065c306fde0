"""Two coordinators on one PostgreSQL database: one leads, the other stands by, serves what
only reads, sends the rest to the leader, and takes over when the leader dies or is paused.

A killed leader's agents carry on: their receipts (signed as a real agent signs them, kept
until acknowledged, sent again unchanged after any error) go to whichever coordinator leads,
and afterwards every one was accepted exactly once and the ledger holds what they signed. A
paused leader that wakes after the takeover writes nothing: its in-flight request is refused
by the database's fence, and the process stops.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess, FakeAgent, lease_receipt
from databases import new_database

from agent.coordinator_client import CoordinatorClient
from coordinator.client import audit
from shared.http_client import CoordinatorError
from shared.receipts import SealedReceipt

PRICE = 36_000_000  # µ¥ per GPU-hour
SETTINGS = {**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000, "start_deadline_ms": 15_000}
BATCH = 8
AGENTS = 3


def _now() -> int:
    return time.time_ns() // 1_000_000


def _pair(tmp_path: Path) -> tuple[CoordinatorProcess, CoordinatorProcess]:
    database = new_database("postgresql", tmp_path)
    key = str(tmp_path / "log.key")  # both hold the same log key, as an operator copies it
    made = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        made.append(
            CoordinatorProcess(
                workdir, settings={**SETTINGS, "log_key_file": key}, database=database
            )
        )
    return made[0], made[1]


async def _health(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(2)) as answer:
                return dict(await answer.json())
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _until_role(url: str, role: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = await _health(url)
        if health is not None and health["role"] == role:
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never became the {role}")


async def _text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as answer:
        assert answer.status == 200
        return await answer.text()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@dataclass
class Stream:
    """One lease as its agent sees it, sending to whichever of the two coordinators leads."""

    agent: FakeAgent
    clients: list[CoordinatorClient]
    lease: dict[str, Any]
    seen_at_ms: int
    signed: list[SealedReceipt] = field(default_factory=list)
    spool: list[SealedReceipt] = field(default_factory=list)
    acked: dict[int, bytes] = field(default_factory=dict)
    at: int = 0
    errors: int = 0

    def sign(self, final: bool = False) -> None:
        previous = self.signed[-1] if self.signed else None
        now = _now()
        gpu_ms = max(previous.receipt.gpu_ms if previous else 0, now - self.seen_at_ms)
        sealed = lease_receipt(
            self.agent, self.lease, gpu_ms, previous, final=final, issued_at_ms=now
        )
        self.signed.append(sealed)
        self.spool.append(sealed)

    async def send_spool(self) -> None:
        batch = self.spool[:BATCH]
        try:
            answer = await self.clients[self.at].signed(
                "/v1/agent/receipts", {"receipts": [s.envelope for s in batch]}, timeout_s=5
            )
        except CoordinatorError as exc:
            if exc.status is not None and exc.status < 500 and exc.status != 307:
                raise AssertionError(f"a receipt batch was refused: {exc}") from None
            self.errors += 1  # unreachable, or not the leader: the same receipts go elsewhere
            self.at = 1 - self.at
            await asyncio.sleep(0.05)
            return
        for sealed, result in zip(batch, answer["results"], strict=True):
            assert result["status"] == "accepted", (sealed.receipt, result)
            earlier = self.acked.setdefault(sealed.receipt.seq, result["acknowledgement"])
            assert earlier == result["acknowledgement"], "one receipt, two different answers"
        del self.spool[: len(batch)]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sign()
            await self.send_spool()
            await asyncio.sleep(random.uniform(0.02, 0.1))
        self.sign(final=True)
        deadline = time.monotonic() + 60
        while self.spool:
            assert time.monotonic() < deadline, f"receipts never acknowledged: {self.spool}"
            await self.send_spool()


@pytest.mark.slow
async def test_a_standby_serves_reads_redirects_writes_and_takes_over_a_killed_leader(
    tmp_path: Path,
) -> None:
    leader, standby = _pair(tmp_path)
    leader.start()
    assert (await _until_role(leader.url, "leader"))["epoch"] == 1
    standby.start()
    seen = await _until_role(standby.url, "standby")
    assert seen["leader"] == leader.url and seen["epoch"] == 1
    things: list[Any] = []
    try:
        agents = [FakeAgent(leader.url, [f"GPU-t{n}"], PRICE) for n in range(AGENTS)]
        things += agents
        for n, agent in enumerate(agents):
            await agent.enrol(leader.add_provider(10 + n))
            await agent.heartbeat()
            agent.keep_alive()
        api = Api(leader.url, leader.add_enterprise(2))
        on_standby = Api(standby.url, api.token)
        things += [api, on_standby]
        jobs = []
        for n in range(AGENTS):
            status, job = await api.submit(
                max_price_per_gpu_hour_micro_yuan=PRICE, idempotency_key=f"storm-{n}"
            )
            assert status == 201, job
            jobs.append(job["id"])

        # the standby reads from the database and sends writes to the leader, unfollowed
        async with aiohttp.ClientSession() as session:
            async with session.post(
                standby.url + "/v1/jobs", json={}, allow_redirects=False
            ) as answer:
                body = await answer.json()
                assert answer.status == 307, body
                assert answer.headers["Location"] == leader.url + "/v1/jobs"
                assert (body["error"], body["leader"]) == ("not_leader", leader.url)
            async with session.get(standby.url + "/v1/log/checkpoint") as answer:
                assert answer.status == 200
            assert _metric(await _text(session, standby.url + "/metrics"), "suanli_leader") == 0
        deadline = time.monotonic() + 10
        while True:  # within a refresh of the standby's view
            status, shown = await on_standby.call("GET", f"/v1/jobs/{jobs[0]}")
            if status == 200:
                break
            assert time.monotonic() < deadline, shown
            await asyncio.sleep(0.2)
        streams = []
        for agent in agents:
            to_standby = CoordinatorClient(standby.url, agent.key)
            things += [to_standby, agent.client]  # both closed, whichever the agent ends on
            lease = await agent.wait_for_lease()
            await agent.client.status(lease["lease_id"], "started")
            streams.append(Stream(agent, [agent.client, to_standby], lease, _now()))
        with pytest.raises(CoordinatorError) as refused:
            await streams[0].clients[1].heartbeat(PRICE, {})
        assert (refused.value.status, getattr(refused.value, "error", None)) == (
            307,
            "not_leader",
        )

        stop = asyncio.Event()
        storm = asyncio.gather(*(stream.run(stop) for stream in streams))
        await asyncio.sleep(1.0)
        state = tmp_path / "audit.json"
        before = await audit.verify_log(leader.url, None, state)
        assert before.ok, before.discrepancies
        killed_at = time.monotonic()
        leader.stop(kill=True)
        health = await _until_role(standby.url, "leader")
        took_over_s = time.monotonic() - killed_at
        print(f"takeover after kill -9: {took_over_s:.2f} s")
        assert health["epoch"] == 2 and health["leader"] == standby.url
        async with aiohttp.ClientSession() as session:
            metrics = await _text(session, standby.url + "/metrics")
        assert (_metric(metrics, "suanli_leader"), _metric(metrics, "suanli_leader_epoch")) == (
            1,
            2,
        )
        assert _metric(metrics, "suanli_takeovers_total") == 1
        for stream in streams:
            stream.agent.client = stream.clients[1]  # its heartbeats follow the new leader
        await asyncio.sleep(1.5)
        stop.set()
        await storm
        assert sum(stream.errors for stream in streams) > 0, "no receipt met the takeover"
        for stream in streams:
            assert sorted(stream.acked) == list(range(1, len(stream.signed) + 1))
            await stream.clients[1].status(stream.lease["lease_id"], "exited", exit_code=0)
        signed = {s.lease["job_id"]: s.signed[-1].receipt.amount for s in streams}
        for job_id in jobs:
            done = await on_standby.wait_for(
                job_id, lambda j: j["state"] == "succeeded", timeout_s=20
            )
            assert done["charged_micro_yuan"] == signed[job_id]
            assert done["attempts"] == 0, "a lease was lost in the takeover"
        for _ in range(100):  # the auditor's saved checkpoint carries across to the new leader
            after = await audit.verify_log(standby.url, None, state)
            if after.receipts == sum(len(s.signed) for s in streams):
                break
            await asyncio.sleep(0.1)
        assert after.ok, after.discrepancies
        assert after.charged == sum(signed.values())
    finally:
        for thing in things:
            await thing.close()
        standby.stop()
        leader.stop()
    total = sum(len(s.signed) for s in streams)
    assert standby.rows("SELECT COUNT(*) FROM receipts") == [(total,)]
    assert standby.rows("SELECT COUNT(*) FROM receipt_rejections") == [(0,)]
    posted = standby.rows("SELECT SUM(amount), SUM(voucher) + SUM(deferred) FROM ledger_postings")
    assert posted[0] == (sum(signed.values()),) * 2
    takeovers = standby.rows("SELECT epoch, reason FROM coordinator_takeovers ORDER BY epoch")
    assert takeovers == [(1, "first leader"), (2, "the leader's database session ended")]
    check = standby.admin("check-ledger", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
async def test_a_paused_leader_that_wakes_after_a_takeover_writes_nothing(
    tmp_path: Path,
) -> None:
    leader, standby = _pair(tmp_path)
    leader.start()
    await _until_role(leader.url, "leader")
    standby.start()
    await _until_role(standby.url, "standby")
    things: list[Any] = []
    try:
        agent = FakeAgent(leader.url, ["GPU-p0"], PRICE)
        things.append(agent)
        await agent.enrol(leader.add_provider(1))
        api = Api(leader.url, leader.add_enterprise(2))
        await agent.heartbeat()
        things.append(api)
        _, job = await api.submit(max_price_per_gpu_hour_micro_yuan=PRICE)
        lease = await agent.wait_for_lease()
        await agent.client.status(lease["lease_id"], "started")
        await asyncio.sleep(0.3)
        receipt = lease_receipt(agent, lease, 200)

        assert leader.process is not None
        leader.process.send_signal(signal.SIGSTOP)
        # the paused leader's socket still accepts: this request waits in its backlog
        pending = asyncio.create_task(
            agent.client.signed("/v1/agent/receipts", {"receipts": [receipt.envelope]}, 30)
        )
        await asyncio.sleep(0.2)
        health = await _until_role(standby.url, "leader")
        assert health["epoch"] == 2
        before = standby.rows("SELECT COUNT(*) FROM receipts")
        leader.process.send_signal(signal.SIGCONT)
        with pytest.raises(CoordinatorError):
            await pending  # refused by the fence, or the connection closed as it stopped
        assert leader.process.wait(timeout=20) == 3, leader.log()
        assert "stopping:" in leader.log()
        assert standby.rows("SELECT COUNT(*) FROM receipts") == before == [(0,)]
        # the same receipt, sent to the new leader, is accepted there once
        to_new = CoordinatorClient(standby.url, agent.key)
        things.append(to_new)
        answer = await to_new.signed("/v1/agent/receipts", {"receipts": [receipt.envelope]})
        assert answer["results"][0]["status"] == "accepted"
        assert standby.rows("SELECT COUNT(*) FROM receipts") == [(1,)]
        takeovers = standby.rows("SELECT epoch, reason FROM coordinator_takeovers ORDER BY epoch")
        assert takeovers == [(1, "first leader"), (2, "the leader's lease lapsed")]
        assert job["id"]
    finally:
        for thing in things:
            await thing.close()
        standby.stop()
        leader.stop()


@pytest.mark.slow
async def test_a_token_revoked_on_the_leader_is_refused_by_the_standby_within_a_refresh(
    tmp_path: Path,
) -> None:
    leader, standby = _pair(tmp_path)
    leader.start()
    await _until_role(leader.url, "leader")
    standby.start()
    await _until_role(standby.url, "standby")
    token = leader.add_enterprise(1)
    on_leader, on_standby = Api(leader.url, token), Api(standby.url, token)
    try:
        # a read that would open the enterprise's accounts writes: the standby cannot
        transfers = standby.rows("SELECT COUNT(*) FROM ledger_transfers")
        async with aiohttp.ClientSession() as session:
            async with session.get(
                standby.url + "/v1/account",
                headers={"Authorization": f"Bearer {token}"},
                allow_redirects=False,
            ) as answer:
                status, body = answer.status, await answer.json()
        assert (status, body["error"], body["leader"]) == (307, "not_leader", leader.url), body
        assert standby.rows("SELECT COUNT(*) FROM ledger_transfers") == transfers
        assert (await on_leader.call("GET", "/v1/account"))[0] == 200
        _, job = await on_leader.submit()
        deadline = time.monotonic() + 10
        while (await on_standby.call("GET", f"/v1/jobs/{job['id']}"))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        leader.admin("revoke-token", "--token", token)
        deadline = time.monotonic() + 10
        while True:
            status, body = await on_standby.call("GET", f"/v1/jobs/{job['id']}")
            if status == 401:
                break
            assert status == 200 and time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
    finally:
        await on_leader.close()
        await on_standby.close()
        standby.stop()
        leader.stop()
