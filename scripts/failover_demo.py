"""Two coordinators on one private PostgreSQL: a job runs, the leader is killed, the standby
takes over, the job finishes and is billed exactly what its agent signed."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from coordinator_harness import (  # noqa: E402
    UNHURRIED_SETTINGS,
    Api,
    CoordinatorProcess,
    FakeAgent,
    lease_receipt,
)
from postgres_cluster import BENCH_SETTINGS, running_cluster  # noqa: E402

from agent.coordinator_client import CoordinatorClient  # noqa: E402
from shared.http_client import CoordinatorError  # noqa: E402
from shared.money import format_money  # noqa: E402

PRICE = 36_000_000  # ¥36 per GPU-hour


async def health(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(2)) as answer:
                return dict(await answer.json())
    except (aiohttp.ClientError, TimeoutError):
        return None


async def wait_for_role(url: str, role: str) -> dict[str, Any]:
    while (seen := await health(url)) is None or seen["role"] != role:
        await asyncio.sleep(0.05)
    return seen


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def main(workdir: Path, database: str) -> int:
    settings = {**UNHURRIED_SETTINGS, "log_key_file": str(workdir / "log.key")}
    pair = []
    for name in ("a", "b"):
        (workdir / name).mkdir()
        pair.append(CoordinatorProcess(workdir / name, settings=dict(settings), database=database))
    first, second = pair
    first.start()
    print("coordinator A:", json.dumps(await wait_for_role(first.url, "leader")))
    second.start()
    print("coordinator B:", json.dumps(await wait_for_role(second.url, "standby")))

    say("an agent and an enterprise; a job is placed and started")
    agent = FakeAgent(first.url, ["GPU-demo-0"], PRICE)
    await agent.enrol(first.add_provider(1))
    await agent.heartbeat()
    api = Api(first.url, first.add_enterprise(2))
    _, job = await api.submit(max_price_per_gpu_hour_micro_yuan=PRICE)
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    started = time.monotonic()
    clients = [agent.client, CoordinatorClient(second.url, agent.key)]
    at, previous, last = 0, None, None

    async def send(final: bool = False) -> None:
        nonlocal at, previous, last
        gpu_ms = int((time.monotonic() - started) * 1000)
        receipt = lease_receipt(agent, lease, gpu_ms, previous, final=final)
        while True:  # the same signed receipt, to whichever coordinator leads
            try:
                await clients[at].signed("/v1/agent/receipts", {"receipts": [receipt.envelope]})
                break
            except CoordinatorError as exc:
                print(f"   receipt {receipt.receipt.seq} to {'AB'[at]}: {exc}; trying the other")
                at = 1 - at
                await asyncio.sleep(0.1)
        previous = last = receipt
        print(f"   receipt {receipt.receipt.seq} accepted by {'AB'[at]}: {gpu_ms} GPU-ms")

    for _ in range(3):
        await asyncio.sleep(0.3)
        await send()

    say("kill -9 the leader (A)")
    killed = time.monotonic()
    first.stop(kill=True)
    seen = await wait_for_role(second.url, "leader")
    print(f"B leads at epoch {seen['epoch']}, {time.monotonic() - killed:.2f} s after the kill")
    for _ in range(3):
        await asyncio.sleep(0.3)
        await send()
    await send(final=True)
    await clients[at].status(lease["lease_id"], "exited", exit_code=0)

    say("the job, as the new leader shows it")
    on_b = Api(second.url, api.token)
    done = await on_b.wait_for(job["id"], lambda j: j["state"] == "succeeded", timeout_s=20)
    assert last is not None
    print(
        f"state {done['state']}, charged {format_money(done['charged_micro_yuan'])}, "
        f"signed {format_money(last.receipt.amount)}, lease attempts {done['attempts']}"
    )
    check = second.admin("check-ledger", check=False)
    print("check-ledger:", (check.stdout or check.stderr).strip())

    say("A comes back as a standby")
    first.start()
    print("coordinator A:", json.dumps(await wait_for_role(first.url, "standby")))
    for thing in (agent, api, on_b, clients[1]):
        await thing.close()
    first.stop()
    second.stop()
    ok = done["charged_micro_yuan"] == last.receipt.amount and check.returncode == 0
    return 0 if ok else 1


def run() -> int:
    with tempfile.TemporaryDirectory(prefix="suanli-failover-") as directory:
        with running_cluster(BENCH_SETTINGS) as cluster:
            print(f"PostgreSQL {cluster.url()}")
            return asyncio.run(main(Path(directory), cluster.create_database()))


if __name__ == "__main__":
    sys.exit(run())
