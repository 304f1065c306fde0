"""`suanli-coordinator admin` tasks for agents: capacity flags and revoking an agent's key."""

from __future__ import annotations

import argparse
import json

from coordinator import accounts
from coordinator.cli.change import change
from coordinator.cli.output import print_result
from coordinator.storage import connect
from shared.clock import now_ms


def add_flag_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    flags = tasks.add_parser(
        "flags",
        parents=[json_flag],
        help="capacity flags (UUID conflicts, changed or vanished GPUs)",
    )
    flags.add_argument("--all", action="store_true", help="cleared flags too")
    flags.add_argument("--agent", help="only this agent's")
    flags.set_defaults(run=cmd_flags)
    clear = tasks.add_parser(
        "clear-flag",
        parents=[json_flag],
        help="clear a flag: the GPU is believed as now reported (a claim "
        "becomes the holding, a vanished GPU is forgotten)",
    )
    clear.add_argument("flag_id", type=int, metavar="ID", help="flag id, from `flags`")
    clear.set_defaults(run=cmd_clear_flag)


def add_agent_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    revoke_agent = tasks.add_parser(
        "revoke-agent",
        parents=[json_flag],
        help="revoke an agent's key: its requests are refused, its GPUs "
        "leave the market and its leases end as lost",
    )
    revoke_agent.add_argument("agent_id", metavar="AGENT_ID")
    revoke_agent.set_defaults(run=cmd_revoke_agent)


def cmd_flags(args: argparse.Namespace) -> int:
    rows = accounts.list_flags(connect(args.db), include_cleared=args.all, agent_id=args.agent)
    if args.json:
        print(json.dumps({"flags": rows}, indent=2))
    elif not rows:
        print("no open capacity flags" if not args.all else "no capacity flags")
    else:
        for row in rows:
            state = "open" if row["cleared_at_ms"] is None else "cleared"
            print(
                f"{row['id']} {state} {row['kind']} agent {row['agent_id']} GPU {row['gpu_uuid']}: "
                f"{row['detail']}"
            )
    return 0


def cmd_clear_flag(args: argparse.Namespace) -> int:
    flag = change(args, lambda db: accounts.clear_flag(db, args.flag_id, now_ms()))
    print_result(args, flag, f"flag {flag['id']} ({flag['kind']} on {flag['gpu_uuid']}) cleared")
    return 0


def cmd_revoke_agent(args: argparse.Namespace) -> int:
    revoked = change(args, lambda db: accounts.revoke_agent(db, args.agent_id, now_ms()))
    print_result(args, revoked, f"agent {args.agent_id} revoked")
    return 0
