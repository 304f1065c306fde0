"""`suanli job submit --secret-env-file FILE`: secret variables from a file of NAME=VALUE
lines, read as Docker's `--env-file` reads them (a value is taken literally, quotes and all;
blank lines and lines starting with # are skipped; `export NAME=VALUE` is accepted as shells
write it). Errors name the file and the line, never the line's text: it may hold a secret."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.client import small_files

MAX_BYTES = 64 * 1024
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")


class EnvFileError(ValueError):
    """The file cannot be read as NAME=VALUE lines; the message is one sentence."""


def read_env_file(path: str) -> dict[str, str]:
    """The variables `path` names, in order; raises EnvFileError naming what is wrong."""
    where = f"--secret-env-file {path}"
    try:
        text = small_files.read_text(path, MAX_BYTES)
    except OSError as exc:
        raise EnvFileError(f"{where}: cannot read it ({exc.strerror})") from None
    except small_files.TooLarge:
        raise EnvFileError(f"{where}: more than {MAX_BYTES // 1024} KiB") from None
    except UnicodeDecodeError:
        raise EnvFileError(f"{where}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            line = stripped.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise EnvFileError(f"{where}, line {number}: expected NAME=VALUE (no '=' found)")
        if not NAME.fullmatch(name):
            raise EnvFileError(
                f"{where}, line {number}: a name is letters, digits and _, not starting "
                "with a digit"
            )
        if name in values:
            raise EnvFileError(f"{where}, line {number}: {name} is given twice")
        values[name] = value
    return values


def merged_secret_env(given: dict[str, str], files: list[str]) -> dict[str, str]:
    """The files' variables in order, then the `--secret-env` flags over them (a flag wins)."""
    merged: dict[str, str] = {}
    for path in files:
        for name, value in read_env_file(str(Path(path))).items():
            merged[name] = value
    merged.update(given)
    return merged
