"""Settings tables for the daemons: fields with a default and a help line, read from TOML.

Each daemon declares its settings as a frozen dataclass whose fields come from `setting()`;
`describe()` lists them for `--help`, and `read_table()` reads one table of a TOML file,
refusing what is not valid TOML and naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any

from shared.errors import SuanliError


def setting(default: Any, help: str) -> Any:
    """A settings field; a callable default is evaluated per instance."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) of every setting, for --help and the docs."""
    out = []
    for item in fields(cls):
        default = item.default_factory() if callable(item.default_factory) else item.default
        out.append((item.name, default, item.metadata["help"]))
    return out


def read_table(
    path: Path, table: str, error: type[SuanliError], whole_file: bool = False
) -> dict[str, Any]:
    """The `[table]` of a TOML file (the whole file when it has no such table and whole_file)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None
    section = data.get(table, data if whole_file else {})
    if not isinstance(section, dict):
        raise error(f"{path}: [{table}] must be a table")
    return section


def typed_values(
    section: dict[str, Any],
    cls: type,
    path: Path,
    error: type[SuanliError],
    skip_tables: bool = False,
) -> dict[str, Any]:
    """Check each value of a table against its setting's type (that of its default)."""
    known: dict[str, Field[Any]] = {item.name: item for item in fields(cls)}
    values: dict[str, Any] = {}
    for name, value in section.items():
        if skip_tables and isinstance(value, dict):
            continue
        if name not in known:
            raise error(f"{path}: unknown setting {name!r}")
        default = known[name].default
        expected = type(default) if default is not None else str
        if type(value) is not expected:
            raise error(f"{path}: {name} must be a {expected.__name__}")
        values[name] = value
    return values
