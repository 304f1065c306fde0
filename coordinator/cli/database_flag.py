"""`--db`: a SQLite file (a path, or sqlite:PATH) or a PostgreSQL URL, checked as typed."""

from __future__ import annotations

import argparse

from coordinator.storage.engines import check_location

DB_HELP = "SQLite database file (PATH or sqlite:PATH) or postgresql://USER@HOST/DBNAME"


def database_flag(text: str) -> str:
    try:
        return check_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
