"""`suanli job submit --secret-env-file FILE`: NAME=VALUE lines read as `docker --env-file`
reads them, flags winning over files, and errors that name the file and the line but never
echo the line (it may hold a secret)."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess
from suanli_run import ok, refused, suanli

from coordinator.client.env_file import MAX_BYTES, EnvFileError, merged_secret_env, read_env_file


def test_lines_are_read_literally_skipping_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text(
        '# tokens\n\nHF_TOKEN=hf_abc=def\nexport WANDB_KEY=w1\nQUOTED="kept as typed"\n'
    )
    assert read_env_file(str(path)) == {
        "HF_TOKEN": "hf_abc=def",
        "WANDB_KEY": "w1",
        "QUOTED": '"kept as typed"',
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A=1\nhf_secret_without_a_name\n", "line 2: expected NAME=VALUE"),
        ("A=1\n9LIVES=hf_secret\n", "line 2: a name is letters"),
        ("A=hf_secret\nA=hf_secret\n", "line 2: A is given twice"),
    ],
)
def test_a_bad_line_is_named_by_its_number_and_never_echoed(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "secrets.env"
    path.write_text(text)
    with pytest.raises(EnvFileError) as refusal:
        read_env_file(str(path))
    assert words in str(refusal.value) and str(path) in str(refusal.value)
    assert "hf_secret" not in str(refusal.value)


def test_an_oversized_binary_or_missing_file_is_refused(tmp_path: Path) -> None:
    big, binary = tmp_path / "big.env", tmp_path / "binary.env"
    big.write_text("A=" + "x" * MAX_BYTES)
    binary.write_bytes(b"A=\xff\xfe\n")
    for path, words in [
        (big, "more than 64 KiB"),
        (binary, "not UTF-8"),
        (tmp_path / "absent", "cannot read it"),
    ]:
        with pytest.raises(EnvFileError, match=words):
            read_env_file(str(path))


def test_files_apply_in_order_and_a_flag_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    first.write_text("A=1\nB=1\n")
    second.write_text("B=2\nC=2\n")
    merged = merged_secret_env({"C": "flag"}, [str(first), str(second)])
    assert merged == {"A": "1", "B": "2", "C": "flag"}


@pytest.mark.integration
def test_a_submitted_jobs_secrets_from_a_file_are_never_shown_back(
    tmp_path: Path, coordinator: CoordinatorProcess
) -> None:
    env = {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": coordinator.add_enterprise(31)}
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("HF_TOKEN=hf_from_the_file\nWANDB_KEY=wandb_from_the_file\n")
    submit = [
        "job", "submit", "--gpus", "1", "--max-duration", "1h", "--max-price-per-gpu-hour",
        "10", "--secret-env-file", str(secrets_file), "--secret-env", "WANDB_KEY=wandb_flag",
        "--image", "busybox:latest", "--", "true",
    ]  # fmt: skip
    posted = ok(suanli(*submit, home=tmp_path, env=env))
    job_id = posted.stdout.strip()
    shown = ok(suanli("job", "show", job_id, "--json", home=tmp_path, env=env))
    assert sorted(shown.json()["spec"]["secret_env"]) == ["HF_TOKEN", "WANDB_KEY"]
    for text in (posted.stdout, posted.stderr, shown.stdout, shown.stderr):
        assert "from_the_file" not in text and "wandb_flag" not in text
    stored = coordinator.rows("SELECT * FROM job_secrets")
    assert stored and all("from_the_file" not in str(row) for row in stored)

    (tmp_path / "broken.env").write_text("HF_TOKEN hf_typo_secret\n")
    broken = [str(tmp_path / "broken.env") if arg == str(secrets_file) else arg for arg in submit]
    message = refused(suanli(*broken, home=tmp_path, env=env))
    assert "broken.env, line 1: expected NAME=VALUE" in message
    assert "hf_typo_secret" not in message
