"""The `suanli` command against a real coordinator process, and its exact unit parsers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from coordinator_harness import GIB, Api, CoordinatorProcess, FakeAgent, clean_env, self_signed

from coordinator.client.units import (
    UnitError,
    format_cores,
    format_duration,
    format_size,
    parse_cores,
    parse_duration,
    parse_size,
)

SUANLI = Path(sys.executable).parent / "suanli"
REQUIRED_JOB_FIELDS = {
    "id",
    "state",
    "reason",
    "agent_id",
    "gpu_uuids",
    "price_per_gpu_hour_micro_yuan",
    "started_at_ms",
    "ended_at_ms",
    "exit_code",
}
JOB = [
    "--image",
    "busybox:latest",
    "--gpus",
    "1",
    "--max-duration",
    "10m",
    "--max-price-per-gpu-hour",
    "10",
]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def _env(url: str | None, token: str | None) -> dict[str, str]:
    env = clean_env()
    if url is not None:
        env["SUANLI_COORDINATOR"] = url
    if token is not None:
        env["SUANLI_TOKEN"] = token
    return env


def run(*args: str, url: str | None = None, token: str | None = None) -> Result:
    done = subprocess.run(
        [SUANLI, *args],
        capture_output=True,
        text=True,
        check=False,
        env=_env(url, token),
        timeout=30,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


async def arun(*args: str, url: str | None = None, token: str | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        SUANLI,
        *args,
        env=_env(url, token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    assert b"Traceback" not in stderr, stderr
    return Result(process.returncode, stdout.decode(), stderr.decode())


def ok(result: Result) -> Result:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


async def small_gpu_agent(
    coordinator: CoordinatorProcess,
    cleanup: list[Any],
    n: int,
    memory: int = 16 * GIB,
    gpus: int = 1,
    ask: int = 2_000_000,
) -> FakeAgent:
    """An enrolled agent that keeps heartbeating, so that the market is not empty."""
    agent = FakeAgent(coordinator.url, [f"GPU-{n}-{i}" for i in range(gpus)], ask, memory=memory)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(n))
    await agent.heartbeat()
    agent.keep_alive()
    return agent


# -- the unit parsers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("1B", 1),
        ("40GiB", 40 * GIB),
        ("40gib", 40 * GIB),
        ("40 GiB", 40 * GIB),
        ("1.5GiB", 3 * GIB // 2),
        ("512MiB", 512 << 20),
        ("2KiB", 2048),
        ("1TiB", 1 << 40),
        ("40GB", 40 * 10**9),
        ("1.5MB", 1_500_000),
        ("0.001KB", 1),
        ("64mb", 64 * 10**6),
        ("64G", 64 * GIB),
        ("64g", 64 * GIB),
        ("64Gi", 64 * GIB),
        ("64GiB", 64 * GIB),
        ("2t", 2 << 40),
        ("512m", 512 << 20),
    ],
)
def test_sizes_are_exact(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "lots",
        "40X",
        "40 GiBs",
        "-1GiB",
        "1e9",
        "0",
        "0GiB",
        "1.5B",
        "0.1KiB",
        "GiB",
        "1..5GiB",
        "٣GiB",
        "1" * 41,
    ],
)
def test_bad_sizes_are_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(UnitError, match=r"size|bytes|zero|longer"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86_400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93_784),
        ("90m", 5400),
        ("1.5h", 5400),
        ("1:30:00", 5400),
        ("2d", 172_800),
        ("30:00", 1800),
        ("2-12", 216_000),
        ("1-00:30", 88_200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2x",
        "h",
        "3600",
        "1.5",
        "1.0001h",
        "1:60",
        "1:00:60",
        "2-24",
        "1:2:3:4",
        "30m1h",
        "1h1h",
        "1h 30m",
        "-1h",
        "0s",
        "0",
        "1w",
        "²",
        "PT1H",
    ],
)
def test_bad_durations_are_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(UnitError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("8", 8000),
        ("0.5", 500),
        ("1.25", 1250),
        ("0.001", 1),
        ("2.500", 2500),
        ("16.0000", 16000),
    ],
)
def test_cores_are_exact(text: str, milli: int) -> None:
    assert parse_cores(text) == milli


@pytest.mark.parametrize("text", ["", "0", "0.0", "0.0005", "-1", "1e3", "half", ".5", "1,5"])
def test_bad_cores_are_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(UnitError, match="core|CPU"):
        parse_cores(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(80 * GIB, "80 GiB"), (3 * GIB // 2, "1.5 GiB"), (512 << 20, "512 MiB"), (100, "100 B")],
)
def test_sizes_display(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 5400, 86_400, 93_784])
def test_durations_display_in_the_form_they_are_read(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("milli", [1, 500, 1250, 8000])
def test_cores_display_in_the_form_they_are_read(milli: int) -> None:
    assert parse_cores(format_cores(milli)) == milli


# -- the command line, before anything is sent --------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-price-per-gpu-hour", "1e3"),
        ("--max-price-per-gpu-hour", "0"),
        ("--max-duration", "2x"),
        ("--min-gpu-memory", "lots"),
        ("--memory", "64X"),
        ("--memory", "1M"),
        ("--max-duration", "100000d"),
        ("--max-duration", "90"),
        ("--gpus", "65"),
        ("--cpus", "0.0001"),
        ("--gpus", "0"),
        ("--env", "NOEQUALS"),
    ],
)
def test_bad_flags_exit_2_with_a_sentence_naming_the_flag(flag: str, value: str) -> None:
    args = list(JOB)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    # No coordinator is needed: the flags are refused before anything is sent.
    result = run("job", "submit", *args, url="http://127.0.0.1:9", token="t")
    assert result.returncode == 2
    assert result.stderr.startswith(f"suanli: {flag}: ")
    assert result.stderr.count("\n") == 1 and "usage:" not in result.stderr
    assert result.stdout == ""


def test_missing_coordinator_or_token_is_one_clear_sentence() -> None:
    result = run("account", token="t")
    assert (result.returncode, result.stderr) == (
        2,
        "suanli: no coordinator given; pass --coordinator URL, set SUANLI_COORDINATOR or run "
        "suanli login\n",
    )
    result = run("job", "list", url="http://127.0.0.1:9")
    assert (result.returncode, result.stderr) == (
        2,
        "suanli: no token given; pass --token T, set SUANLI_TOKEN or run suanli login\n",
    )


def test_plain_http_to_another_host_is_refused_without_sending_anything() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        # 0.0.0.0 is not loopback to the transport check, yet a connection to it would
        # reach this listener: so silence here means nothing was sent.
        result = run("account", url=f"http://0.0.0.0:{port}", token="secret")
        assert result.returncode == 2
        assert result.stderr.startswith("suanli: refusing to send credentials over plain HTTP")
        assert result.stderr.count("\n") == 1
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_an_unreachable_coordinator_is_one_sentence_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        result = run("job", "list", url=url, token="t")
    assert result.returncode == 1
    assert result.stderr.startswith(f"suanli: cannot reach the coordinator at {url} (")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


# -- against a coordinator ----------------------------------------------------------------


def test_submit_prints_the_id_and_show_json_has_the_fields_scripts_use(
    coordinator: CoordinatorProcess,
) -> None:
    token = coordinator.add_enterprise(1)
    submitted = ok(
        run(
            "job",
            "submit",
            *JOB,
            "--min-gpu-memory",
            "40GiB",
            "--gpu-model",
            "H100",
            "--gpu-model",
            "A100",
            "--cpus",
            "0.5",
            "--memory",
            "1.5GiB",
            "--max-duration",
            "1h30m",
            "--max-price-per-gpu-hour",
            "12.345678",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--",
            "python",
            "-c",
            "print(1)",
            "--json",
            url=coordinator.url,
            token=token,
        )
    )
    job_id = submitted.stdout.strip()
    assert submitted.stdout == job_id + "\n" and job_id.startswith("job")

    job = ok(run("job", "show", job_id, "--json", url=coordinator.url, token=token)).json()
    assert REQUIRED_JOB_FIELDS <= job.keys()
    assert job["id"] == job_id
    assert job["state"] == "pending"
    assert (job["agent_id"], job["gpu_uuids"], job["price_per_gpu_hour_micro_yuan"]) == (
        None,
        [],
        None,
    )
    spec = job["spec"]
    assert spec["command"] == ["python", "-c", "print(1)", "--json"]
    assert spec["env"] == {"A": "1", "B": "x=y"}
    assert spec["min_gpu_memory_bytes"] == 40 * GIB
    assert spec["cpus_milli"] == 500
    assert spec["memory_bytes"] == 3 * GIB // 2
    assert spec["max_duration_s"] == 5400
    assert spec["max_price_per_gpu_hour_micro_yuan"] == 12_345_678
    assert spec["gpu_models"]  # the server expands H100/A100 to its canonical models

    # --json before the subcommand, connection settings as flags instead of the environment.
    again = ok(
        run("--coordinator", coordinator.url, "--token", token, "--json", "job", "show", job_id)
    )
    assert again.json()["id"] == job_id

    shown = ok(run("job", "show", job_id, url=coordinator.url, token=token)).stdout
    assert job_id in shown and "pending" in shown
    assert "¥12.345678 per GPU-hour" in shown and "µ¥" not in shown
    assert "python -c 'print(1)' --json" in shown

    as_json = ok(run("job", "submit", *JOB, "--json", url=coordinator.url, token=token)).json()
    assert as_json["state"] == "pending" and as_json["id"] != job_id


async def test_a_pending_job_shows_why_it_waits(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    await small_gpu_agent(coordinator, cleanup, 1, memory=16 * GIB)
    token = coordinator.add_enterprise(2)
    job_id = ok(
        await arun(
            "job", "submit", *JOB, "--min-gpu-memory", "1TiB", url=coordinator.url, token=token
        )
    ).stdout.strip()
    api = Api(coordinator.url, token)
    cleanup.append(api)
    await api.wait_for(job_id, lambda j: j["reason"] == "no_agent_with_enough_gpu_memory")

    job = ok(await arun("job", "show", job_id, "--json", url=coordinator.url, token=token)).json()
    assert (job["state"], job["reason"]) == ("pending", "no_agent_with_enough_gpu_memory")
    shown = ok(await arun("job", "show", job_id, url=coordinator.url, token=token)).stdout
    assert "no_agent_with_enough_gpu_memory: no agent has 1 free healthy GPU" in shown
    assert "1024 GiB" in shown


def test_the_same_idempotency_key_gives_the_same_job(coordinator: CoordinatorProcess) -> None:
    token = coordinator.add_enterprise(3)
    first = ok(
        run(
            "job",
            "submit",
            *JOB,
            "--idempotency-key",
            "nightly-42",
            url=coordinator.url,
            token=token,
        )
    ).stdout
    second = ok(
        run(
            "job",
            "submit",
            *JOB,
            "--idempotency-key",
            "nightly-42",
            url=coordinator.url,
            token=token,
        )
    ).stdout
    assert first == second
    # Without a key each submit is a new job.
    third = ok(run("job", "submit", *JOB, url=coordinator.url, token=token)).stdout
    fourth = ok(run("job", "submit", *JOB, url=coordinator.url, token=token)).stdout
    assert len({first, third, fourth}) == 3
    # The key reused for another job is the server's refusal, in its words.
    clash = run(
        "job",
        "submit",
        *JOB,
        "--gpus",
        "2",
        "--idempotency-key",
        "nightly-42",
        url=coordinator.url,
        token=token,
    )
    assert clash.returncode == 1
    assert clash.stderr.startswith("suanli: idempotency key 'nightly-42' was already used")


def test_a_wrong_token_gets_the_servers_sentence(coordinator: CoordinatorProcess) -> None:
    for args in (["account"], ["job", "list"], ["market", "--json"]):
        result = run(*args, url=coordinator.url, token="sk_not_a_token")
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == "suanli: the token is not valid\n"


def test_server_refusals_are_its_sentence_and_exit_1(coordinator: CoordinatorProcess) -> None:
    token = coordinator.add_enterprise(4)
    missing = run("job", "show", "job-nope", url=coordinator.url, token=token)
    assert (missing.returncode, missing.stderr) == (1, "suanli: no job job-nope\n")
    odd = run("job", "show", "../../account", url=coordinator.url, token=token)
    assert odd.returncode == 1 and "no job ../../account" in odd.stderr
    state = run("job", "list", "--state", "sleeping", url=coordinator.url, token=token)
    assert state.returncode == 1 and state.stderr.startswith("suanli: state: expected one of")


def test_job_list_shows_only_your_own_jobs(coordinator: CoordinatorProcess) -> None:
    mine, theirs = coordinator.add_enterprise(5), coordinator.add_enterprise(6)
    assert ok(run("job", "list", url=coordinator.url, token=mine)).stdout == "no jobs\n"
    my_ids = {
        ok(run("job", "submit", *JOB, url=coordinator.url, token=mine)).stdout.strip()
        for _ in range(2)
    }
    their_id = ok(run("job", "submit", *JOB, url=coordinator.url, token=theirs)).stdout.strip()

    listed = ok(run("job", "list", "--json", url=coordinator.url, token=mine)).json()
    assert {job["id"] for job in listed["jobs"]} == my_ids
    table = ok(run("job", "list", url=coordinator.url, token=mine)).stdout
    assert all(job_id in table for job_id in my_ids) and their_id not in table
    assert "pending" in table and "busybox:latest" in table
    limited = ok(run("job", "list", "--limit", "1", "--json", url=coordinator.url, token=mine))
    assert len(limited.json()["jobs"]) == 1
    other = ok(
        run("job", "list", "--state", "pending", "--json", url=coordinator.url, token=theirs)
    )
    assert [job["id"] for job in other.json()["jobs"]] == [their_id]
    # Another enterprise's job is not even visible by id.
    assert run("job", "show", their_id, url=coordinator.url, token=mine).returncode == 1


def test_cancelling_a_pending_job(coordinator: CoordinatorProcess) -> None:
    token = coordinator.add_enterprise(7)
    job_id = ok(run("job", "submit", *JOB, url=coordinator.url, token=token)).stdout.strip()
    assert ok(run("job", "cancel", job_id, url=coordinator.url, token=token)).stdout == (
        f"{job_id} cancelled\n"
    )
    job = ok(run("job", "show", job_id, "--json", url=coordinator.url, token=token)).json()
    assert job["state"] == "cancelled" and job["ended_at_ms"] is not None
    again = ok(run("job", "cancel", job_id, "--json", url=coordinator.url, token=token)).json()
    assert again["state"] == "cancelled"


async def test_market_shows_the_agents_gpus(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent = await small_gpu_agent(coordinator, cleanup, 8, memory=80 * GIB, gpus=2, ask=2_500_000)
    token = coordinator.add_enterprise(9)
    market = ok(await arun("market", "--json", url=coordinator.url, token=token)).json()
    assert market["agents_online"] == market["agents_total"] == 1
    [row] = market["models"]
    assert row["model"].startswith("H100")
    assert (row["gpus"], row["free"], row["leased"], row["unavailable"]) == (2, 2, 0, 0)
    assert row["ask_min_micro_yuan"] == row["ask_max_micro_yuan"] == agent.ask

    table = ok(await arun("market", url=coordinator.url, token=token)).stdout
    assert row["model"] in table and "80 GiB" in table and "2.50" in table
    assert "PFLOPS" in table and "agents online: 1 of 1" in table

    account = ok(await arun("account", url=coordinator.url, token=token)).stdout
    assert account.startswith("enterprise ent-") and "credit: limit ¥" in account
    as_json = ok(await arun("account", "--json", url=coordinator.url, token=token)).json()
    assert as_json["role"] == "enterprise"


async def test_job_logs_print_what_the_agent_sent(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent = await small_gpu_agent(coordinator, cleanup, 10, memory=80 * GIB)
    token = coordinator.add_enterprise(11)
    url = coordinator.url
    job_id = ok(await arun("job", "submit", *JOB, url=url, token=token)).stdout.strip()
    lease = await agent.wait_for_lease()
    assert lease["job_id"] == job_id
    lease_id = lease["lease_id"]
    await agent.client.status(lease_id, "started")
    first = "step 1 loss 0.93\n训练 ✓\n".encode()
    await agent.client.log_chunk(lease_id, 0, first)

    assert ok(await arun("job", "logs", job_id, url=url, token=token)).stdout == first.decode()
    chunks = ok(await arun("job", "logs", job_id, "--json", url=url, token=token)).stdout
    last = json.loads(chunks.splitlines()[-1])
    assert (last["complete"], last["job_state"]) == (False, "running")

    job = ok(await arun("job", "show", job_id, "--json", url=url, token=token)).json()
    assert (job["state"], job["agent_id"], job["gpu_uuids"]) == (
        "running",
        agent.agent_id,
        agent.uuids,
    )
    assert job["price_per_gpu_hour_micro_yuan"] == 10_000_000  # one offer: the job's max price
    assert job["started_at_ms"] is not None
    shown = ok(await arun("job", "show", job_id, url=url, token=token)).stdout
    assert "¥10.00 per GPU-hour" in shown and agent.agent_id in shown

    follow = asyncio.create_task(arun("job", "logs", job_id, "--follow", url=url, token=token))
    await asyncio.sleep(0.7)
    assert not follow.done()
    second = b"step 2 loss 0.41\n"
    await agent.client.log_chunk(lease_id, len(first), second)
    await agent.client.status(lease_id, "exited", exit_code=0)
    followed = ok(await asyncio.wait_for(follow, timeout=20))
    assert followed.stdout == (first + second).decode()

    done = ok(await arun("job", "show", job_id, "--json", url=url, token=token)).json()
    assert (done["state"], done["exit_code"]) == ("succeeded", 0)
    assert done["ended_at_ms"] is not None
    final = ok(await arun("job", "logs", job_id, "--follow", "--json", url=url, token=token))
    [line] = final.stdout.splitlines()
    assert json.loads(line)["complete"] is True


def test_https_is_verified_against_the_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    process = CoordinatorProcess(
        tmp_path, scheme="https", extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]
    )
    process.start()
    try:
        token = process.add_enterprise(12)
        trusted = ok(run("--ca-file", str(cert), "account", "--json", url=process.url, token=token))
        assert trusted.json()["role"] == "enterprise"
        untrusted = run("account", url=process.url, token=token)
        assert untrusted.returncode == 1
        assert untrusted.stderr.startswith(
            f"suanli: cannot verify the TLS certificate of the coordinator at {process.url}"
        )
        assert "--ca-file" in untrusted.stderr and untrusted.stderr.count("\n") == 1
        missing = run(
            "account", "--ca-file", str(tmp_path / "nope.pem"), url=process.url, token=token
        )
        assert missing.returncode == 2 and missing.stderr.startswith("suanli: cannot use CA file")
    finally:
        process.stop()
