"""The client's own settings file: named profiles of a coordinator, a token and a CA file,
written by `suanli login` to `$XDG_CONFIG_HOME/suanli/config.toml` (else
`~/.config/suanli/config.toml`).

The file holds tokens, so it is written 0600 in a 0700 directory, replaced atomically, and
never read while anyone but its owner could read or write it (as ssh treats its keys).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from coordinator.client.arguments import CommandLineError

ENV_PROFILE = "SUANLI_PROFILE"
DEFAULT_PROFILE = "default"
MAX_CONFIG_BYTES = 1 << 20
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HEADER = (
    "# suanli's client settings, written by `suanli login`. It holds API tokens:\n"
    "# keep it 0600 (suanli refuses to read it otherwise).\n"
)


@dataclass(frozen=True)
class Profile:
    """Where one profile's commands go, and with which token."""

    coordinator: str | None = None
    token: str | None = None
    ca_file: str | None = None


KEYS = [f.name for f in fields(Profile)]


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """The settings file, by the XDG base directory rules (a relative XDG_CONFIG_HOME is
    ignored, as they say)."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if not base or not os.path.isabs(base):
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return Path(base) / "suanli" / "config.toml"


def profile_name(name: str, where: str) -> str:
    if not PROFILE_NAME.fullmatch(name):
        raise CommandLineError(
            f"{where}: {name[:80]!r} is not a profile name (1 to 64 letters, digits, - and _, "
            "starting with a letter or digit)"
        )
    return name


def read_profiles(path: Path) -> dict[str, Profile]:
    """Every profile in `path`; none if it does not exist. Refused if others may read or
    write it, if someone else owns it, or if it is not what `suanli login` writes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CommandLineError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CommandLineError(f"refusing to read {path}: it is not a regular file")
        if info.st_uid != os.geteuid():
            raise CommandLineError(
                f"refusing to read {path}: it belongs to user {info.st_uid}, not to you"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise CommandLineError(
                f"refusing to read {path}: it holds tokens and others may read or change it "
                f"(mode {mode:04o}); run chmod 600 {path}"
            )
        raw = file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise CommandLineError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise CommandLineError(f"{path} is not valid TOML: {exc}") from None
    return _profiles(path, data)


def _profiles(path: Path, data: dict[str, object]) -> dict[str, Profile]:
    extra = sorted(set(data) - {"profiles"})
    if extra:
        raise CommandLineError(f"{path}: unknown key {extra[0]!r}; profiles go in [profiles.NAME]")
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise CommandLineError(f"{path}: profiles must be tables, [profiles.NAME]")
    out = {}
    for name, table in tables.items():
        where = f"{path}: profiles.{name}"
        profile_name(name, str(path))
        if not isinstance(table, dict):
            raise CommandLineError(f"{where} must be a table")
        for key, value in table.items():
            if key not in KEYS:
                raise CommandLineError(
                    f"{where}: unknown key {key!r}; the keys are {', '.join(KEYS)}"
                )
            if not isinstance(value, str) or not value:
                raise CommandLineError(f"{where}.{key} must be a non-empty string")
        out[name] = Profile(**table)
    return out


def chosen_profile(flag: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """The profile to use and whether it was asked for by name (--profile, SUANLI_PROFILE)."""
    if flag:
        return profile_name(flag, "--profile"), True
    if environ.get(ENV_PROFILE):
        return profile_name(environ[ENV_PROFILE], ENV_PROFILE), True
    return DEFAULT_PROFILE, False


def toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def save_profile(path: Path, name: str, profile: Profile) -> None:
    """Add or replace one profile, keeping the others; the file is replaced atomically."""
    profiles = read_profiles(path)
    profiles[name] = profile
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    lines = [HEADER]
    for each, entry in sorted(profiles.items()):
        lines.append(f"\n[profiles.{each}]\n")
        for key in KEYS:
            value = getattr(entry, key)
            if value is not None:
                lines.append(f"{key} = {toml_string(value)}\n")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("".join(lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
