"""`suanli-coordinator admin postgres-grants`: the grants a coordinator's service role needs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from coordinator.storage.postgres_roles import check_role, service_grants


def add_database_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    grants = tasks.add_parser(
        "postgres-grants",
        help="print the SQL granting a service role what serve needs (run it with psql as the "
        "tables' owner)",
    )
    grants.add_argument("--role", required=True, type=_role("--role"), help="the service role")
    grants.add_argument(
        "--owner", required=True, type=_role("--owner"), help="the role owning the tables"
    )
    grants.set_defaults(run=cmd_postgres_grants, db=None, needs_db=False)


def _role(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return check_role(text, flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def cmd_postgres_grants(args: argparse.Namespace) -> int:
    print(service_grants(args.role, args.owner), end="")
    return 0
