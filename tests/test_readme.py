"""Every command the README shows exists and parses as written; the admin ones also run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from coordinator.cli import build_parser as coordinator_parser
from coordinator.client.cli import build_parser as client_parser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARSERS = {
    "suanli-agent": agent_parser,
    "suanli-coordinator": coordinator_parser,
    "suanli": client_parser,
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in re.split(r"\s[|>]\s", line):  # each command of a pipe or redirect
                words = shlex.split(part)
                if not words:
                    continue
                if words[0] == "sudo":
                    words = words[3:] if words[1:2] == ["-u"] else words[1:]
                words[0] = Path(words[0]).name if "/.venv/bin/" in words[0] else words[0]
                commands.append(words)
    return commands


COMMANDS = readme_commands()
# Debian's PostgreSQL client programs (postgresql-client), which the PostgreSQL section shows
POSTGRES_CLIENTS = {"createuser", "createdb", "psql", "pg_dump", "pg_basebackup"}


def test_the_readme_shows_the_commands_of_every_user() -> None:
    firsts = {words[0] for words in COMMANDS}
    assert {
        "scripts/demo",
        "scripts/test",
        "suanli",
        "suanli-agent",
        "suanli-coordinator",
    } <= firsts
    assert any(words[:2] == ["suanli", "audit"] for words in COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w)[:60] for w in COMMANDS])
def test_each_readme_command_is_real(words: list[str]) -> None:
    program = words[0]
    if program in PARSERS:
        PARSERS[program]().parse_args(words[1:])  # exits 2 on an unknown command or flag
    elif program.startswith("scripts/"):
        script = ROOT / program
        assert script.is_file() and os.access(script, os.X_OK), program
        subprocess.run(["bash", "-n", script], check=True)
    elif program in POSTGRES_CLIENTS:
        assert shutil.which(program), f"{program} is not installed (scripts/install-test-deps)"
    elif program == "systemctl":
        assert (ROOT / "systemd" / f"{words[-1]}.service").is_file()
    else:
        assert program == "export", f"the README shows {program}, which nothing here provides"


def test_the_readme_admin_commands_run_as_written(tmp_path: Path) -> None:
    for words in COMMANDS:
        if words[:2] == ["suanli-coordinator", "admin"] and not any(
            word.startswith("postgresql://") for word in words
        ):  # a server's commands run in tests/integration/test_postgres_roles.py
            argv = [
                str(tmp_path / "coordinator.db") if word.endswith("coordinator.db") else word
                for word in words[1:]
            ]
            result = subprocess.run(
                [BIN / "suanli-coordinator", *argv], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, (words, result.stderr)
