"""A quote before spending, through a real coordinator and the real `suanli` command: what
`job submit --dry-run` and `job quote` say a job would meet is what a real submission then
meets (its reservation, its price, its voucher share of the charge), a quote changes nothing,
and a rogue enterprise learns asks no finer than the quote's rounding, at a bounded rate."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from coordinator_harness import (
    UNHURRIED_SETTINGS,
    Api,
    CoordinatorProcess,
    FakeAgent,
    lease_receipt,
)
from databases import engine_params, new_database
from suanli_run import ok, refused, suanli

from coordinator.jobs.quote import rounded_up
from shared.messages import decode_json
from shared.messages.quote import JobQuote
from shared.money import usage_amount

CHEAP = 3_000_000  # ¥3.00
DEAR = 4_123_456  # ¥4.123456: shown to a quote as at most ¥4.20
BURST = 130


@pytest.fixture(scope="module", params=engine_params())
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[CoordinatorProcess]:
    workdir = tmp_path_factory.mktemp("quote")
    settings = {
        **UNHURRIED_SETTINGS,
        "quote_requests_per_minute": 1,
        "quote_request_burst": BURST,
    }
    process = CoordinatorProcess(
        workdir, settings=settings, database=new_database(request.param, workdir)
    ).start()
    try:
        yield process
    finally:
        process.stop()


async def _agents(server: CoordinatorProcess, cleanup: list[Any], tag: str) -> list[FakeAgent]:
    """A cheap and a dear agent with two H100s each (providers numbered after `tag`)."""
    agents = []
    for ask, kind in [(CHEAP, "c"), (DEAR, "d")]:
        agent = FakeAgent(server.url, [f"GPU-{tag}{kind}0", f"GPU-{tag}{kind}1"], ask)
        cleanup.append(agent)
        await agent.enrol(server.add_provider(len(tag) * 10 + len(agents) + ord(tag[0])))
        await agent.heartbeat()
        agent.keep_alive()
        agents.append(agent)
    return agents


def _cli(server: CoordinatorProcess, token: str, home: Path, *args: str) -> Any:
    return suanli(*args, home=home, env={"SUANLI_COORDINATOR": server.url, "SUANLI_TOKEN": token})


JOB = ["--image", "busybox:latest", "--gpus", "1", "--max-duration", "10m"]


async def _reservation(api: Api, job_id: str) -> dict[str, Any]:
    status, account = await api.call("GET", "/v1/account")
    assert status == 200, account
    return next(r for r in account["reservations"] if r["job_id"] == job_id)


async def _run_and_charge(agent: FakeAgent, api: Api, job_id: str) -> dict[str, Any]:
    lease = await agent.wait_for_lease()
    assert lease["job_id"] == job_id
    await agent.client.status(lease["lease_id"], "started")
    await asyncio.sleep(0.3)  # the receipt's GPU time must fit in the lease's elapsed time
    sealed = lease_receipt(agent, lease, 250, final=True)
    answer = await agent.client.signed("/v1/agent/receipts", {"receipts": [sealed.envelope]})
    assert answer["results"][0]["status"] == "accepted", answer
    await agent.client.status(lease["lease_id"], "exited", exit_code=0)
    return await api.wait_for(
        job_id, lambda j: j["state"] == "succeeded" and j["charged_micro_yuan"]
    )


async def test_a_dry_run_says_what_the_real_submission_then_meets(
    server: CoordinatorProcess, cleanup: list[Any], tmp_path: Path
) -> None:
    cheap, _ = await _agents(server, cleanup, "a")
    token = server.add_enterprise(10)
    api = Api(server.url, token)
    cleanup.append(api)

    # two agents fit: the price is the dearer one's ask, told rounded up
    dry = ok(
        _cli(
            server,
            token,
            tmp_path,
            "--json",
            "job",
            "submit",
            "--dry-run",
            *JOB,
            "--max-price-per-gpu-hour",
            "10",
        )
    )
    quote = decode_json(JobQuote, dry.stdout.encode())
    assert quote.runs_now and quote.reason is None
    assert (quote.agents, quote.gpus) == (2, 4)
    assert [msgspec.to_builtins(m) for m in quote.models] == [
        {"model": "H100 SXM", "agents": 2, "gpus": 4}
    ]
    assert quote.price_per_gpu_hour_micro_yuan == 4_200_000
    assert not quote.price_per_gpu_hour_exact
    assert quote.max_cost_micro_yuan == usage_amount(600_000, 10_000_000)
    assert quote.voucher_micro_yuan == quote.max_cost_micro_yuan * quote.coverage_bps // 10_000
    assert quote.voucher_micro_yuan + quote.own_money_micro_yuan == quote.max_cost_micro_yuan
    status, listed = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []  # the dry run posted nothing

    job_id = ok(
        _cli(server, token, tmp_path, "job", "submit", *JOB, "--max-price-per-gpu-hour", "10")
    ).stdout.strip()
    held = await _reservation(api, job_id)
    assert held["max_cost_micro_yuan"] == quote.max_cost_micro_yuan
    assert held["voucher_estimate_micro_yuan"] == quote.voucher_micro_yuan
    assert held["reserved_micro_yuan"] == quote.own_money_micro_yuan
    done = await _run_and_charge(cheap, api, job_id)
    paid = done["price_per_gpu_hour_micro_yuan"]
    assert paid == DEAR and rounded_up(paid) == quote.price_per_gpu_hour_micro_yuan
    assert done["voucher_micro_yuan"] == done["charged_micro_yuan"] * quote.coverage_bps // 10_000

    # only the cheap agent at or below ¥3.50: the price is the job's own max price, exactly
    text = ok(
        _cli(server, token, tmp_path, "job", "quote", *JOB, "--max-price-per-gpu-hour", "3.50")
    ).stdout
    assert "price          ¥3.50 per GPU-hour (your max price)" in text, text
    assert "fits           2 agents, 4 free GPUs (H100 SXM 4 GPUs on 2)" in text, text
    assert "would run      yes, if posted now" in text, text
    exact = ok(
        _cli(
            server,
            token,
            tmp_path,
            "--json",
            "job",
            "quote",
            *JOB,
            "--max-price-per-gpu-hour",
            "3.50",
        )
    ).json()
    assert exact["price_per_gpu_hour_exact"] and exact["price_per_gpu_hour_micro_yuan"] == 3_500_000
    job_id = ok(
        _cli(server, token, tmp_path, "job", "submit", *JOB, "--max-price-per-gpu-hour", "3.50")
    ).stdout.strip()
    held = await _reservation(api, job_id)
    assert held["max_cost_micro_yuan"] == exact["max_cost_micro_yuan"]
    assert held["voucher_estimate_micro_yuan"] == exact["voucher_micro_yuan"]
    assert held["reserved_micro_yuan"] == exact["own_money_micro_yuan"]
    done = await _run_and_charge(cheap, api, job_id)
    assert done["price_per_gpu_hour_micro_yuan"] == exact["price_per_gpu_hour_micro_yuan"]
    assert (
        done["voucher_micro_yuan"] == done["charged_micro_yuan"] * exact["coverage_bps"] // 10_000
    )


async def test_a_quote_nobody_can_take_says_why_in_a_pending_jobs_words(
    server: CoordinatorProcess, cleanup: list[Any], tmp_path: Path
) -> None:
    await _agents(server, cleanup, "b")
    token = server.add_enterprise(11)
    api = Api(server.url, token)
    cleanup.append(api)
    for flags, reason in [
        (["--max-price-per-gpu-hour", "1"], "no_agent_at_or_below_max_price"),
        (["--max-price-per-gpu-hour", "10", "--gpu-model", "A100"], "no_agent_with_that_model"),
        (
            ["--max-price-per-gpu-hour", "10", "--min-gpu-memory", "200G"],
            "no_agent_with_enough_gpu_memory",
        ),
    ]:
        quote = ok(_cli(server, token, tmp_path, "--json", "job", "quote", *JOB, *flags)).json()
        assert not quote["runs_now"] and quote["reason"] == reason, quote
        assert quote["price_per_gpu_hour_micro_yuan"] is None
        status, job = await api.submit(**_body(flags))
        assert status == 201, job
        pending = await api.wait_for(job["id"], lambda j: j["reason"] != "waiting_for_auction")
        # the same words; counts may differ if an earlier test's agents went offline since
        assert (pending["reason"], _words(pending["reason_detail"])) == (
            quote["reason"],
            _words(quote["reason_detail"]),
        )
        await api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    text = ok(
        _cli(server, token, tmp_path, "job", "quote", *JOB, "--max-price-per-gpu-hour", "1")
    ).stdout
    assert "would run      no, it would wait (no_agent_at_or_below_max_price): " in text, text
    assert "agents could run the job, but all ask more than its max price" in text, text


def _words(detail: str) -> str:
    """A reason's words with its numbers (the counts of agents) left out."""
    return re.sub(r"\d+", "N", detail)


def _body(flags: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"max_duration_s": 600}
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    body["max_price_per_gpu_hour_micro_yuan"] = int(pairs["--max-price-per-gpu-hour"]) * 1_000_000
    if "--gpu-model" in pairs:
        body["gpu_models"] = [pairs["--gpu-model"]]
    if "--min-gpu-memory" in pairs:
        body["min_gpu_memory_bytes"] = 200 << 30
    return body


QUOTED_TABLES = (
    "jobs",
    "job_secrets",
    "leases",
    "auction_rounds",
    "ledger_accounts",
    "ledger_transfers",
    "ledger_reservations",
    "ledger_postings",
    "log_entries",
)


def _state(server: CoordinatorProcess) -> dict[str, list[tuple[Any, ...]]]:
    return {t: server.rows(f"SELECT * FROM {t} ORDER BY 1") for t in QUOTED_TABLES}  # noqa: S608


async def _settled(server: CoordinatorProcess) -> dict[str, list[tuple[Any, ...]]]:
    """The stored state once two readings agree (earlier tests' jobs may still be settling)."""
    before = _state(server)
    while True:
        await asyncio.sleep(0.5)
        again = _state(server)
        if again == before:
            return again
        before = again


async def test_a_hundred_quotes_change_nothing(
    server: CoordinatorProcess, cleanup: list[Any]
) -> None:
    await _agents(server, cleanup, "c")
    api = Api(server.url, server.add_enterprise(12))  # never posted: its year is not set up
    cleanup.append(api)
    status, account_before = await api.call("GET", "/v1/account")
    before = await _settled(server)
    body = {
        "image": "busybox:latest",
        "gpus": 1,
        "max_duration_s": 3600,
        "secret_env": {"TOKEN": "s3cret"},
        "name": "probe",
        "labels": {"team": "nlp"},
    }
    for n in range(100):
        price = 1_000_000 + n * 100_000  # ¥1.00 to ¥10.90: most win, some do not
        status, quote = await api.call(
            "POST", "/v1/jobs/quote", {**body, "max_price_per_gpu_hour_micro_yuan": price}
        )
        assert status == 200, quote
        assert msgspec.to_builtins(decode_json(JobQuote, json.dumps(quote).encode())) == quote
        assert quote["runs_now"] == (price >= CHEAP)
    assert _state(server) == before
    status, account = await api.call("GET", "/v1/account")
    assert account == account_before and account["reserved_micro_yuan"] == 0
    status, listed = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []


async def test_quotes_are_for_enterprises_and_limited_per_enterprise(
    server: CoordinatorProcess, cleanup: list[Any]
) -> None:
    auditor = Api(server.url, server.admin_json("add-auditor", "--name", "Audit")["token"])
    agent = Api(server.url, server.add_provider(40))  # an enrolment token is no API token
    nobody = Api(server.url, None)
    rogue = Api(server.url, server.add_enterprise(13))
    cleanup += [auditor, agent, nobody, rogue]
    body = {
        "image": "busybox:latest",
        "gpus": 1,
        "max_duration_s": 600,
        "max_price_per_gpu_hour_micro_yuan": 5_000_000,
    }
    status, answer = await auditor.call(
        "POST", "/v1/jobs/quote", data=b"not json", headers={"Content-Type": "application/json"}
    )
    assert (status, answer["error"]) == (403, "forbidden"), answer
    assert "only enterprise accounts can ask for a quote" in answer["detail"]
    for client in (agent, nobody):
        status, answer = await client.call("POST", "/v1/jobs/quote", body)
        assert status == 401, answer

    answered = 0
    for _ in range(BURST + 10):  # refills during the loop only add to what is answered
        status, answer = await rogue.call("POST", "/v1/jobs/quote", body)
        if status == 429:
            break
        assert status == 200, answer
        answered += 1
    assert status == 429, f"{answered} quotes answered and none refused"
    assert answered >= BURST
    assert answer["detail"].startswith("this enterprise's quotes sent more than"), answer
    status, answer = await rogue.call("GET", "/v1/jobs")  # other calls still go through
    assert status == 200, answer


async def test_a_quote_says_when_posting_would_be_refused_and_reads_job_files(
    server: CoordinatorProcess, cleanup: list[Any], tmp_path: Path
) -> None:
    token = server.add_enterprise(14)
    api = Api(server.url, token)
    cleanup.append(api)
    (tmp_path / "job.toml").write_text(
        'image = "busybox:latest"\ngpus = 64\nmax-duration = "30d"\n'
        'max-price-per-gpu-hour = "100"\nname = "too-big"\n[label]\nteam = "nlp"\n'
    )
    quote = ok(
        suanli(
            "--json",
            "job",
            "quote",
            "-f",
            "job.toml",
            home=tmp_path,
            cwd=tmp_path,
            env={"SUANLI_COORDINATOR": server.url, "SUANLI_TOKEN": token},
        )
    ).json()
    assert quote["max_cost_micro_yuan"] == 64 * 30 * 24 * 100_000_000
    status, job = await api.submit(
        gpus=64, max_duration_s=30 * 86_400, max_price_per_gpu_hour_micro_yuan=100_000_000
    )
    assert status == 402 and job["error"] == "credit_exceeded", job
    assert quote["refused"].startswith("this job's reservation")
    real = job["detail"].split("'s reservation", 1)[1]
    assert quote["refused"] == "this job's reservation" + real
    text = ok(
        _cli(
            server, token, tmp_path, "job", "submit", "--dry-run", "-f", str(tmp_path / "job.toml")
        )
    ).stdout
    assert "refused        posting it now would be refused: this job's reservation" in text
    status, listed = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []
