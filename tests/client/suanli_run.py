"""Running the real `suanli` command for the client's tests: a clean environment with its own
HOME and XDG_CONFIG_HOME, so that no test reads or writes the settings of the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator_harness import clean_env

SUANLI = Path(sys.executable).parent / "suanli"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def suanli(
    *args: str | Path,
    home: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> Result:
    environment = clean_env()
    environment.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
    environment.update(env or {})
    done = subprocess.run(
        [SUANLI, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        input=stdin if stdin is not None else "",
        cwd=cwd,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def ok(result: Result) -> Result:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


def refused(result: Result, status: int = 2) -> str:
    """The one line a refused command printed, after checking it printed nothing else."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("suanli: ") and result.stderr.count("\n") == 1, result.stderr
    assert "usage:" not in result.stderr
    return result.stderr.removeprefix("suanli: ").rstrip("\n")
