"""`suanli-coordinator admin sessions`: the shells, copies and forwarded ports relayed to jobs,
newest first: who (enterprise and token), which job, lease and agent, when, how long, bytes."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from coordinator.relay.records import list_sessions
from coordinator.storage import connect


def add_session_tasks(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    sessions = tasks.add_parser(
        "sessions",
        parents=[json_flag],
        help="the shells, copies and ports relayed to jobs (who, when, how long, bytes)",
    )
    sessions.add_argument("--job", metavar="JOB_ID", help="only this job's sessions")
    sessions.add_argument("--enterprise", metavar="ID", help="only this enterprise's sessions")
    sessions.set_defaults(run=cmd_sessions)


def cmd_sessions(args: argparse.Namespace) -> int:
    db = connect(args.db)
    try:
        rows = list_sessions(db, job_id=args.job, enterprise_id=args.enterprise)
    finally:
        db.conn.close()  # type: ignore[attr-defined]  # both engines' connections close
    if args.json:
        print(json.dumps({"sessions": rows}, indent=2))
    elif not rows:
        print("no relayed sessions")
    for row in [] if args.json else rows:
        started = datetime.fromtimestamp(row["started_at_ms"] / 1000, UTC)
        ended = row["ended_at_ms"]
        lasted = "still open" if ended is None else f"{(ended - row['started_at_ms']) / 1000:.1f} s"
        print(
            f"{row['id']} {row['kind']} job {row['job_id']} lease {row['lease_id']} "
            f"agent {row['agent_id']} by {row['enterprise_id']} (token {row['token_hash'][:12]}) "
            f"at {started:%Y-%m-%d %H:%M:%S} UTC, {lasted}, {row['bytes_in']} bytes in, "
            f"{row['bytes_out']} out, exit {row['exit_code']}: {row['detail']}"
            + (f" ({row['end_reason']})" if row["end_reason"] else "")
        )
    return 0
