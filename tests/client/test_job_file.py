"""`suanli job submit -f job.toml` against a real coordinator: every flag has a key, flags
override the file, and a bad or hostile file is refused naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_harness import GIB, CoordinatorProcess
from suanli_run import ok, refused, suanli

# each test runs the real `suanli` command
pytestmark = pytest.mark.integration

NOWHERE = {"SUANLI_COORDINATOR": "http://127.0.0.1:9", "SUANLI_TOKEN": "t"}
FULL = """\
image = "busybox:latest"
gpus = 2
min-gpu-memory = "40G"
gpu-model = ["H100", "A100"]
cpus = 0.5
memory = "1.5GiB"
scratch = "64M"
network = "egress"
max-duration = "1.5h"
max-price-per-gpu-hour = 12.345678   # a TOML number, read exactly as typed
idempotency-key = "from-the-file"
name = "train-from-file"
command = ["python", "-c", "print(1)"]

[env]
A = "1"
EPOCHS = 3

[secret-env]
HF_TOKEN = "hf_secret"

[label]
team = "nlp"
"example.com/stage" = "prod"
"""


@pytest.fixture
def env(coordinator: CoordinatorProcess) -> dict[str, str]:
    return {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": coordinator.add_enterprise(21)}


def _show(job_id: str, tmp_path: Path, env: dict[str, str]) -> dict:
    return ok(suanli("job", "show", job_id, "--json", home=tmp_path, env=env)).json()


def test_every_flag_is_a_key(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "job.toml").write_text(FULL)
    job_id = ok(suanli("job", "submit", "-f", "job.toml", home=tmp_path, env=env, cwd=tmp_path))
    job = _show(job_id.stdout.strip(), tmp_path, env)
    spec = job["spec"]
    assert (spec["image"], spec["gpus"], spec["min_gpu_memory_bytes"]) == (
        "busybox:latest",
        2,
        40 * GIB,
    )
    assert (spec["cpus_milli"], spec["memory_bytes"], spec["max_duration_s"]) == (
        500,
        3 * GIB // 2,
        5400,
    )
    assert spec["max_price_per_gpu_hour_micro_yuan"] == 12_345_678
    assert spec["command"] == ["python", "-c", "print(1)"]
    assert spec["env"] == {"A": "1", "EPOCHS": "3"}
    assert list(spec["secret_env"]) == ["HF_TOKEN"] and "hf_secret" not in str(job)
    assert job["idempotency_key"] == "from-the-file"
    assert (spec["scratch_bytes"], spec["network"]) == (64 << 20, "egress")
    assert len(spec["gpu_models"]) >= 2
    assert spec["name"] == "train-from-file"
    assert spec["labels"] == {"team": "nlp", "example.com/stage": "prod"}

    help_text = ok(suanli("job", "submit", "--help", home=tmp_path)).stdout
    keys = help_text.split("job file keys:")[1].split()
    assert [key.rstrip(",") for key in keys] == [
        "image",
        "gpus",
        "min-gpu-memory",
        "gpu-model",
        "cpus",
        "memory",
        "scratch",
        "network",
        "max-duration",
        "max-price-per-gpu-hour",
        "env",
        "secret-env",
        "idempotency-key",
        "name",
        "label",
        "command",
    ]


def test_flags_override_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "job.toml").write_text(FULL.replace('idempotency-key = "from-the-file"\n', ""))
    job_id = ok(
        suanli(
            "job",
            "submit",
            "--gpus",
            "1",
            "--file",
            tmp_path / "job.toml",
            "--gpu-model",
            "H100",
            "--env",
            "EPOCHS=5",
            "--max-duration",
            "2:00:00",
            "--",
            "sh",
            "-c",
            "exit 0",
            home=tmp_path,
            env=env,
        )
    ).stdout.strip()
    spec = _show(job_id, tmp_path, env)["spec"]
    assert spec["gpus"] == 1 and spec["max_duration_s"] == 7200
    assert spec["env"] == {"A": "1", "EPOCHS": "5"}  # a table is merged name by name
    assert spec["command"] == ["sh", "-c", "exit 0"]  # a list is replaced
    assert spec["image"] == "busybox:latest" and spec["memory_bytes"] == 3 * GIB // 2


def test_a_job_file_on_stdin(tmp_path: Path, env: dict[str, str]) -> None:
    job_id = ok(suanli("job", "submit", "-f", "-", home=tmp_path, env=env, stdin=FULL))
    assert _show(job_id.stdout.strip(), tmp_path, env)["spec"]["gpus"] == 2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            'max_duration = "2h"\n',
            "job.toml: unknown key 'max_duration' (did you mean max-duration?)",
        ),
        ('token = "sk_ent_x"\n', "job.toml: unknown key 'token'"),  # the user's, not the job's
        # a file handed to you cannot send your credentials to an agent of its choosing
        ('registry-auth = ".docker/config.json"\n', "job.toml: unknown key 'registry-auth'"),
        ('secret-env-file = [".env"]\n', "job.toml: unknown key 'secret-env-file'"),
        ('max-duration = "100000d"\n', "job.toml: max-duration: at most 30d (2592000 s)"),
        ("max-duration = 90\n", "job.toml: max-duration: duration '90' has no unit; add one"),
        (f"gpus = {10**30}\n", "job.toml: gpus: "),
        ("gpus = 100\n", "job.toml: gpus: at most 64 GPUs"),
        ("gpus = true\n", "job.toml: gpus: expected a string or a number, got true/false"),
        ('memory = "64X"\n', "job.toml: memory: '64X' is not a size"),
        ('memory = "1M"\n', "job.toml: memory: at least 64 MiB (67108864 bytes)"),
        ("max-price-per-gpu-hour = 1e3\n", "job.toml: max-price-per-gpu-hour: price '1E+3'"),
        ("[env]\nA = { nested = 1 }\n", "job.toml: env.A: expected a string or a number"),
        ('env = "A=1"\n', "job.toml: env: expected a table"),
        ('command = "python train.py"\n', 'job.toml: command: expected a list, like ["python"'),
        ("command = [[[1]]]\n", "job.toml: command[0]: expected a string or a number, got a list"),
        ("gpus = 1979-05-27\n", "job.toml: gpus: expected a string or a number, got date"),
        ("image = \n", "job file job.toml is not valid TOML"),
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "job file job.toml is not valid TOML"),
        ("\xff\n", "job file job.toml is not UTF-8 text"),
    ],
)
def test_a_bad_or_hostile_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, text: str, says: str
) -> None:
    (tmp_path / "job.toml").write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    base = ["--image", "busybox", "--gpus", "1", "--max-duration", "1h"]
    result = suanli(
        "job",
        "submit",
        *base,
        "--max-price-per-gpu-hour",
        "1",
        "-f",
        "job.toml",
        home=tmp_path,
        env=NOWHERE,  # refused before anything is sent: no coordinator listens there
        cwd=tmp_path,
    )
    line = refused(result)
    assert line.startswith(says), line


def test_a_huge_or_missing_file_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_text('image = "' + "a" * (2 << 20) + '"\n')
    line = refused(suanli("job", "submit", "-f", huge, home=tmp_path, env=NOWHERE))
    assert line == f"job file {huge} is larger than 1048576 bytes"
    line = refused(suanli("job", "submit", "-f", tmp_path / "nope.toml", home=tmp_path))
    assert line == f"cannot read job file {tmp_path / 'nope.toml'}: No such file or directory"


def test_what_neither_gives_is_named_as_flags(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text('image = "busybox"\n')
    line = refused(suanli("job", "submit", "-f", "job.toml", home=tmp_path, cwd=tmp_path))
    assert line == (
        "--gpus, --max-duration, --max-price-per-gpu-hour are required: give them on the "
        "command line or in a job file (-f)"
    )


def test_the_coordinators_refusal_names_the_flag(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "job.toml").write_text(FULL.replace('"busybox:latest"', '"bad image"'))
    line = refused(
        suanli("job", "submit", "-f", "job.toml", home=tmp_path, env=env, cwd=tmp_path), 1
    )
    assert line.startswith("--image: expected an image reference"), line
    line = refused(
        suanli(
            "job",
            "submit",
            "-f",
            "job.toml",
            "--image",
            "busybox",
            "--env",
            "1BAD=x",
            home=tmp_path,
            env=env,
            cwd=tmp_path,
        ),
        1,
    )
    assert line == '--env: expected letters, digits and _, not starting with a digit, got "1BAD"'
