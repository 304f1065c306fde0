"""What a real coordinator answers is what shared/messages declares: every answer decodes into
its declared type and encodes back to the same body (no field missing, none undeclared)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from coordinator_harness import Api, CoordinatorProcess, FakeAgent, lease_receipt

from shared.http_client import CoordinatorError
from shared.identity import PrivateKey
from shared.messages import ErrorBody, api, convert, decode_json
from shared.messages import agent_protocol as ap
from shared.messages import log as log_messages
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, seal_receipt

ASK = 3_600_000_000


def same_agent_body(type_: Any, body: Any) -> Any:
    decoded = convert(type_, body)
    assert msgspec.to_builtins(decoded, builtin_types=(bytes,)) == body, type_.__name__
    return decoded


def same_json(type_: Any, body: Any) -> Any:
    decoded = decode_json(type_, json.dumps(body).encode())
    assert msgspec.to_builtins(decoded) == body, type_.__name__
    return decoded


async def _get(client: Api, path: str, status: int = 200) -> Any:
    got, body = await client.call("GET", path)
    assert got == status, body
    return body


async def test_every_answer_is_its_declared_type(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent = FakeAgent(coordinator.url, ["GPU-d0"], ASK)
    cleanup.append(agent)
    same_agent_body(ap.EnrolAnswer, await agent.enrol(coordinator.add_provider(1)))
    same_agent_body(ap.HeartbeatAnswer, await agent.heartbeat())
    agent.keep_alive()
    enterprise = Api(coordinator.url, coordinator.add_enterprise(2))
    auditor = Api(coordinator.url, coordinator.admin_json("add-auditor", "--name", "A")["token"])
    cleanup += [enterprise, auditor]

    status, job = await enterprise.submit(
        max_price_per_gpu_hour_micro_yuan=ASK, idempotency_key="k-1", secret_env={"S": "v"}
    )
    assert status == 201, job
    same_json(api.JobView, job)
    status, again = await enterprise.submit(
        max_price_per_gpu_hour_micro_yuan=ASK, idempotency_key="k-1", secret_env={"S": "v"}
    )
    assert status == 200 and again["id"] == job["id"]
    answer: dict[str, Any] = {"leases": [], "version": -1}
    deadline = time.monotonic() + 10
    while not answer["leases"]:
        assert time.monotonic() < deadline, await enterprise.job(job["id"])
        answer = await agent.client.leases(answer["version"], 1000)
    same_agent_body(ap.LeasesAnswer, answer)
    lease = answer["leases"][0]
    same_agent_body(ap.StatusAnswer, await agent.client.status(lease["lease_id"], "started"))
    same_agent_body(ap.LogAnswer, await agent.client.log_chunk(lease["lease_id"], 0, b"hello\n"))
    await asyncio.sleep(0.2)  # the receipt's GPU time must fit in the lease's elapsed time
    sealed = lease_receipt(agent, lease, 100)
    receipts = await agent.client.signed(
        "/v1/agent/receipts", {"receipts": [sealed.envelope, b"x"]}
    )
    batch = same_agent_body(ap.ReceiptsAnswer, receipts)
    assert [r.status for r in batch.results] == ["accepted", "rejected"]

    same_json(api.JobView, await _get(enterprise, f"/v1/jobs/{job['id']}"))
    same_json(api.JobList, await _get(enterprise, "/v1/jobs"))
    same_json(api.JobList, await _get(auditor, "/v1/jobs?state=running&limit=5"))
    same_json(api.JobLogPage, await _get(enterprise, f"/v1/jobs/{job['id']}/logs?offset=0"))
    same_json(api.Market, await _get(enterprise, "/v1/market"))
    account = same_json(api.Account, await _get(enterprise, "/v1/account"))
    assert account.role == "enterprise" and account.voucher is not msgspec.UNSET
    assert same_json(api.Account, await _get(auditor, "/v1/account")).uscc is msgspec.UNSET
    balances = same_json(api.LedgerBalances, await _get(auditor, "/v1/ledger/balances"))
    same_json(api.VoucherPool, await _get(enterprise, "/v1/vouchers/pool"))
    same_json(api.Health, await _get(enterprise, "/healthz"))
    same_json(ErrorBody, await _get(enterprise, "/v1/jobs/job-nope", 404))

    cancelled = await enterprise.call("POST", f"/v1/jobs/{job['id']}/cancel")
    same_json(api.JobView, cancelled[1])
    exited = await agent.client.status(lease["lease_id"], "exited", exit_code=143, reason="stop")
    same_agent_body(ap.StatusAnswer, exited)
    rotated = await agent.client.rotate_key(PrivateKey.generate())
    same_agent_body(ap.RotateAnswer, rotated)
    await agent.stop_heartbeats()
    with pytest.raises(CoordinatorError) as refused:
        await agent.heartbeat()  # the old key is refused from now on, in the one error shape
    assert (refused.value.status, refused.value.error) == (401, "agent_revoked")

    size = balances.log_size
    same_json(log_messages.KeyChanges, await _get(auditor, "/v1/log/key-changes"))
    same_json(log_messages.EntriesPage, await _get(auditor, f"/v1/log/entries?start=0&end={size}"))
    same_json(
        log_messages.InclusionProof,
        await _get(auditor, f"/v1/log/proof/inclusion?index=0&size={size}"),
    )
    same_json(
        log_messages.ConsistencyProof,
        await _get(auditor, f"/v1/log/proof/consistency?old=1&new={size}"),
    )
    same_json(
        log_messages.FoundEntry, await _get(auditor, f"/v1/log/find?digest={sealed.digest.hex()}")
    )
    same_json(
        log_messages.FoundEntry, await _get(auditor, f"/v1/log/find?agent_id={agent.agent_id}")
    )
