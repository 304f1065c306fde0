"""`suanli completion bash|zsh`: the printed script completes commands, flags and file
arguments in the real shells, from the same parser the command runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from suanli_run import SUANLI, ok, suanli

from coordinator.client.cli import build_parser
from coordinator.client.completion import tree

# each test runs the real `suanli` command
pytestmark = pytest.mark.integration

BASH_CASES = {
    "suanli j": ["job"],
    "suanli job su": ["submit"],
    "suanli job submit --max-": ["--max-duration", "--max-price-per-gpu-hour"],
    "suanli --coordinator https://x job l": ["list", "logs"],
    "suanli --token t --profile p log": ["login"],
    "suanli completion ": ["bash", "zsh"],
    "suanli job submit -f job.t": ["job.toml"],
    "suanli job submit --gpus ": [],  # a value: nothing to offer
    "suanli job submit --image x -- py": [],  # the job's own command: left to the shell
}


def _bash_complete(script: Path, line: str, cwd: Path) -> list[str]:
    program = f"""
compopt() {{ :; }}   # only valid inside a real completion; a no-op here
source {script}
read -ra COMP_WORDS <<< "$LINE"
[[ $LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
COMPREPLY=()
_suanli
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "-c", program],
        env={"LINE": line, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return sorted(word for word in done.stdout.split("\n") if word)


def test_bash_completes_commands_flags_and_files(tmp_path: Path) -> None:
    script = tmp_path / "suanli.bash"
    script.write_text(ok(suanli("completion", "bash", home=tmp_path)).stdout)
    (tmp_path / "job.toml").write_text("")
    for line, expected in BASH_CASES.items():
        assert _bash_complete(script, line, tmp_path) == expected, line


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_the_script_and_describes_what_follows(tmp_path: Path) -> None:
    script = tmp_path / "_suanli"
    script.write_text(ok(suanli("completion", "zsh", home=tmp_path)).stdout)
    assert subprocess.run(["zsh", "-n", script], check=False).returncode == 0
    # zsh's completion system, with _describe and _files recording what they were offered
    program = f"""
autoload -U compinit && compinit -u -D
_describe() {{ print -l -- "${{(@P)4}}"; }}
_files() {{ print -- FILES; }}
source {script}
words=(${{=LINE}}); [[ $LINE == *' ' ]] && words+=('')
CURRENT=${{#words}}
_suanli
"""

    def offered(line: str) -> list[str]:
        done = subprocess.run(
            ["zsh", "-f", "-c", program],
            env={"LINE": line, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.splitlines()

    assert "submit:post a job" in offered("suanli job su")
    assert "--max-duration:longest the job may run, e.g. 90m, 1.5h, 2d, 1h30m or 1:30:00" in (
        offered("suanli job submit --max")
    )
    assert offered("suanli job submit -f ") == ["FILES"]
    assert offered("suanli completion ") == ["bash:the shell", "zsh:the shell"]


def test_every_command_of_the_parser_is_in_the_scripts(tmp_path: Path) -> None:
    bash = ok(suanli("completion", "bash", home=tmp_path)).stdout
    zsh = ok(suanli("completion", "zsh", home=tmp_path)).stdout
    for at, node in tree(build_parser()):
        assert f"'{at}')" in bash and f"'{at}')" in zsh
        for name in [*node.commands, *node.options]:
            assert name in bash and name in zsh


def test_an_unknown_shell_is_a_wrong_command(tmp_path: Path) -> None:
    result = suanli("completion", "fish", home=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
    assert SUANLI.exists()
