"""`--db`: a SQLite file (a path, or sqlite:PATH) or a PostgreSQL URL, checked as typed; when
it is not given, `database` in coordinator.toml (so a URL with a password need not be on a
command line every local user can read)."""

from __future__ import annotations

import argparse

from coordinator.config import ConfigError, load_settings
from coordinator.storage.engines import check_location

DB_HELP = (
    "SQLite database file (PATH or sqlite:PATH) or postgresql://USER@HOST/DBNAME "
    "(default: `database` in --config)"
)


def database_flag(text: str) -> str:
    try:
        return check_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fill_database(args: argparse.Namespace) -> None:
    """`--db`, or the config file's `database`; a command that needs one and has neither is
    refused with a sentence."""
    if not hasattr(args, "db") or args.db is not None or not getattr(args, "needs_db", True):
        return
    configured = load_settings(getattr(args, "config", None)).database
    if configured is None:
        raise ConfigError("no database given: pass --db, or set database in coordinator.toml")
    try:
        args.db = check_location(configured)
    except ValueError as exc:
        raise ConfigError(f"database in coordinator.toml: {exc}") from None
