"""Errors in the words the user typed: a refused value names the flag and its limit in the
flag's units, in one line without argparse's usage block (kept for a wrong command or an
unknown flag), and the coordinator's refusal of a job names the flag, not the JSON field."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess
from suanli_run import refused, suanli

# each test runs the real `suanli` command
pytestmark = pytest.mark.integration

JOB = ["--image", "busybox", "--gpus", "1", "--max-duration", "1h"]
PRICE = ["--max-price-per-gpu-hour", "1"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--max-duration", "100000d"], "--max-duration: at most 30d (2592000 s)"),
        (["--max-dur", "31d"], "--max-duration: at most 30d (2592000 s)"),  # abbreviated
        (
            ["--max-duration", "5400"],
            "--max-duration: duration '5400' has no unit; add one: 5400s, 5400m, 5400h or "
            "5400d (or write it as H:MM:SS)",
        ),
        (["--gpus=65"], "--gpus: at most 64 GPUs"),
        (["--gpus", "0"], "--gpus: '0' is not a whole number above zero"),
        (["--gpus"], "--gpus: expected one argument"),
        (["--cpus", "2000"], "--cpus: at most 1024 cores"),
        (["--cpus", "0.05"], "--cpus: at least 0.1 cores"),
        (["--memory", "20T"], "--memory: at most 16 TiB (17592186044416 bytes)"),
        (["--memory", "1M"], "--memory: at least 64 MiB (67108864 bytes)"),
        (
            ["--min-gpu-memory", "2000T"],
            "--min-gpu-memory: at most 1024 TiB (1125899906842624 bytes)",
        ),
        (
            ["--max-price-per-gpu-hour", "2000000"],
            "--max-price-per-gpu-hour: at most ¥1,000,000.00",
        ),
        (
            ["--max-price-per-gpu-hour", "0"],
            "--max-price-per-gpu-hour: price '0' must be more than ¥0",
        ),
        (["--env", "NOEQUALS"], "--env: 'NOEQUALS' is not NAME=VALUE"),
        (["--env", "A=1", "--env", "A=2"], "--env: A is given twice"),
    ],
)
def test_a_refused_value_names_the_flag_and_its_limit_in_its_units(
    tmp_path: Path, args: list[str], line: str
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        env = {"SUANLI_COORDINATOR": f"http://127.0.0.1:{listener.getsockname()[1]}"}
        result = suanli(
            "job", "submit", *JOB, *PRICE, *args, home=tmp_path, env={**env, "SUANLI_TOKEN": "t"}
        )
        assert refused(result) == line
        with pytest.raises(BlockingIOError):  # nothing was sent
            listener.accept()


def test_other_commands_refuse_values_alike(tmp_path: Path) -> None:
    result = suanli("job", "list", "--limit", "none", home=tmp_path)
    assert refused(result) == "--limit: 'none' is not a whole number above zero"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["job", "submti"], "argument ACTION: invalid choice: 'submti'"),
        (["jbo"], "argument COMMAND: invalid choice: 'jbo'"),
        (["job", "submit", *JOB, *PRICE, "--gpu", "2"], "ambiguous option: --gpu could match"),
        (["job", "submit", *JOB, *PRICE, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_a_wrong_command_or_unknown_flag_keeps_the_usage_block(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = suanli(*args, home=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: suanli") and says in result.stderr


def test_the_coordinators_refusals_name_the_flags(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    env = {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": coordinator.add_enterprise(51)}
    for args, start in [
        (["--image", "not an image"], "--image: expected an image reference"),
        (["--env", "A=" + "x" * 5000], "--env A: expected a string of at most 4096 characters"),
        (["--gpu-model", ""], "--gpu-model #1: expected a model name of 1 to 128 characters"),
        (["--idempotency-key", "k" * 200], "--idempotency-key: expected"),
        (["--env", "A=1", "--secret-env", "A=2"], "A is given both as --env and --secret-env"),
    ]:
        result = suanli("job", "submit", *JOB, *PRICE, *args, home=tmp_path, env=env)
        line = refused(result, 2 if "given both" in start else 1)
        assert line.startswith(start), line
        assert "_s:" not in line and "micro_yuan" not in line
