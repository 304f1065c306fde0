"""The three commands are installed and answer; unbuilt subcommands are absent, not faked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["suanli-agent", "suanli-coordinator", "suanli"])
def test_command_is_installed_and_prints_help(command: str) -> None:
    result = subprocess.run([BIN / command, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")


@pytest.mark.parametrize("command", ["suanli-agent", "suanli-coordinator", "suanli"])
def test_command_reports_its_version(command: str) -> None:
    result = subprocess.run(
        [BIN / command, "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.split() == [command, "0.1.0"]


def test_unknown_subcommand_is_refused_with_a_sentence() -> None:
    result = subprocess.run(
        [BIN / "suanli", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
