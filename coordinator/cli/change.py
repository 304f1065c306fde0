"""An admin task's one change to the database it names (`--db`), made in one transaction."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from coordinator.storage import Session, connect, transaction

T = TypeVar("T")


def change(args: argparse.Namespace, make: Callable[[Session], T]) -> T:
    """Open (and migrate) `args.db`, run `make` in one transaction, and return what it made."""
    db = connect(args.db)
    with transaction(db):
        return make(db)
