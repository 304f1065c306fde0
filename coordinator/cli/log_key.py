"""`suanli-coordinator admin rotate-log-key`: a new log key, signed over by the old one."""

from __future__ import annotations

import argparse

from coordinator import tlog
from coordinator.cli.output import print_result
from coordinator.config import load_settings, log_key_location
from coordinator.storage import connect
from shared.clock import now_ms


def add_log_key_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    rotate = tasks.add_parser(
        "rotate-log-key",
        parents=[json_flag],
        help="make a new log key, signed over by the old one in the log (the "
        "server switches within a second; the old key is kept)",
    )
    rotate.set_defaults(run=cmd_rotate_log_key)


def cmd_rotate_log_key(args: argparse.Namespace) -> int:
    key_path = log_key_location(load_settings(args.config), args.db)
    db = connect(args.db)
    try:
        rotated = tlog.rotate_log_key(db, key_path, now_ms())
    finally:
        db.conn.close()  # type: ignore[attr-defined]  # both engines' connections close
    print_result(
        args,
        rotated,
        f"log key rotated at entry {rotated['log_index']}\n"
        f"new log key: {rotated['new_log_key']}\nold key kept in {rotated['archived_key']}",
    )
    return 0
