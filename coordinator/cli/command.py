"""The `suanli-coordinator` parser, its commands in the order `--help` lists them, and `main`."""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.cli.accounts import add_account_tasks, add_token_tasks
from coordinator.cli.agents import add_agent_tasks, add_flag_tasks
from coordinator.cli.billing import add_billing_tasks
from coordinator.cli.database import add_database_tasks
from coordinator.cli.database_flag import DB_HELP, database_flag, fill_database
from coordinator.cli.log_key import add_log_key_tasks
from coordinator.cli.migrate import add_migrate_task
from coordinator.cli.serve import add_serve
from coordinator.cli.sessions import add_session_tasks
from shared.command_line import run_command, top_parser
from shared.errors import SuanliError


def build_parser() -> argparse.ArgumentParser:
    parser = top_parser(
        "suanli-coordinator",
        "Suanli coordinator: auctions jobs to agents, verifies signed receipts, "
        "debits vouchers and publishes a transparency log.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve(commands)

    admin = commands.add_parser("admin", help="manage accounts in the database")
    admin.add_argument("--db", type=database_flag, help=DB_HELP)
    admin.add_argument("--json", action="store_true", help="machine-readable output")
    admin.add_argument("--config", type=Path, help="coordinator.toml (its [vouchers] policy)")
    tasks = admin.add_subparsers(dest="task", metavar="TASK", required=True)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    add_account_tasks(tasks, json_flag)
    add_billing_tasks(tasks, json_flag)
    add_flag_tasks(tasks, json_flag)
    add_token_tasks(tasks, json_flag)
    add_agent_tasks(tasks, json_flag)
    add_log_key_tasks(tasks, json_flag)
    add_database_tasks(tasks, json_flag)
    add_migrate_task(tasks, json_flag)
    add_session_tasks(tasks, json_flag)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (SuanliError, ValueError), fill_database)
