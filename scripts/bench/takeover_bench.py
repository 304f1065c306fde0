"""Benchmark: how long a standby takes to lead when the leader dies or stops answering.

Two `suanli-coordinator serve` processes on one PostgreSQL database, sharing one log key as
an operator's two machines would. The leader is killed with SIGKILL again and again; each time
the time from the kill to the standby's /healthz saying "leader" is taken, and the killed one
is started again as the new standby. Then the same with a leader paused with SIGSTOP (its
database session stays open, so the standby waits for the lease to lapse: at most
`leader_lease_ms`); the paused one is woken with SIGCONT once the standby leads, stops by
itself (fenced out), and is started again as the new standby.

The PostgreSQL server is a private cluster this bench starts (tests/postgres_cluster.py,
BENCH_SETTINGS), or the server `--db postgresql://...` names (a new database is made there).
The market is empty: the time is the election's and the new leader's start-up, not a backlog's.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bench_engines

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the loopback harness lives with the tests

from coordinator_harness import FAST_SETTINGS, CoordinatorProcess

GOAL_S = 5.0
POLL_S = 0.01
SETTINGS = {**FAST_SETTINGS, "heartbeat_timeout_ms": 60_000, "start_deadline_ms": 60_000}


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as answer:
            return dict(json.loads(answer.read()))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def until_role(coordinator: CoordinatorProcess, role: str, timeout_s: float = 60) -> float:
    """Wait for `coordinator`'s /healthz to say `role`; the monotonic time it first did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = health(coordinator.url)
        if seen is not None and seen.get("role") == role:
            return time.monotonic()
        time.sleep(POLL_S)
    raise RuntimeError(f"{coordinator.url} never became the {role}:\n{coordinator.log()[-3000:]}")


def epoch(coordinator: CoordinatorProcess) -> int:
    seen = health(coordinator.url)
    return int(seen["epoch"]) if seen is not None else -1


def takeovers(
    leader: CoordinatorProcess, standby: CoordinatorProcess, times: int, pause: bool
) -> tuple[list[float], CoordinatorProcess, CoordinatorProcess]:
    """Kill (or pause) the leader `times` times; the seconds each standby took to lead."""
    taken = []
    for n in range(times):
        assert leader.process is not None
        if pause:
            leader.process.send_signal(signal.SIGSTOP)
            struck = time.monotonic()
        else:
            struck = time.monotonic()
            leader.stop(kill=True)
        led = until_role(standby, "leader")
        taken.append(led - struck)
        how = "paused" if pause else "killed"
        print(
            f"  {how} {n + 1:<3}       {led - struck:6.2f} s to lead (epoch {epoch(standby)})",
            flush=True,
        )
        if pause:
            assert leader.process is not None
            leader.process.send_signal(signal.SIGCONT)
            code = leader.process.wait(timeout=30)
            if code != 3:
                raise RuntimeError(f"the woken leader exited with {code}, not 3 (fenced out)")
            leader.process = None
        leader.start()
        until_role(leader, "standby")
        leader, standby = standby, leader
    return taken, leader, standby


def summary(what: str, taken: list[float]) -> str:
    if not taken:
        return f"{what:<18} not measured"
    worst = max(taken)
    return (
        f"{what:<18} min {min(taken):.2f} s   median {statistics.median(taken):.2f} s   "
        f"max {worst:.2f} s over {len(taken)}; goal < {GOAL_S:g} s: "
        f"{bench_engines.verdict(worst < GOAL_S)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, help="kill -9 takeovers (default 5; quick 2)")
    parser.add_argument("--pauses", type=int, help="SIGSTOP takeovers (default 3; quick 1)")
    parser.add_argument(
        "--lease-ms", type=int, default=3_000, help="leader_lease_ms (default 3000, its default)"
    )
    parser.add_argument("--quick", action="store_true", help="2 kills and 1 pause, ~30 s")
    parser.add_argument(
        "--db",
        default=bench_engines.POSTGRESQL,
        help="postgresql (a private cluster, the default) or postgresql://USER@HOST/DBNAME",
    )
    args = parser.parse_args()
    kills = args.kills if args.kills is not None else (2 if args.quick else 5)
    pauses = args.pauses if args.pauses is not None else (1 if args.quick else 3)
    if args.db == bench_engines.SQLITE:
        raise SystemExit("--db sqlite: only PostgreSQL has standbys")
    began = time.monotonic()
    with (
        bench_engines.engines(args.db) as chosen,
        tempfile.TemporaryDirectory(prefix="suanli-bench-") as tmp,
    ):
        database = chosen.fresh(bench_engines.POSTGRESQL)
        settings = {
            **SETTINGS,
            "log_key_file": str(Path(tmp) / "log.key"),
            "leader_lease_ms": args.lease_ms,
        }
        pair = []
        for name in ("a", "b"):
            (Path(tmp) / name).mkdir()
            pair.append(
                CoordinatorProcess(Path(tmp) / name, settings=dict(settings), database=database)
            )
        leader, standby = pair
        print(
            f"setup              two coordinators on {chosen.describe_server()}"
            f"; leader_lease_ms {args.lease_ms}; /healthz polled every {POLL_S * 1000:.0f} ms",
            flush=True,
        )
        try:
            leader.start()
            until_role(leader, "leader")
            standby.start()
            until_role(standby, "standby")
            killed, leader, standby = takeovers(leader, standby, kills, pause=False)
            paused, leader, standby = takeovers(leader, standby, pauses, pause=True)
        finally:
            for coordinator in pair:
                if coordinator.process is not None:
                    coordinator.process.send_signal(signal.SIGCONT)
                coordinator.stop()
    print(summary("after kill -9", killed))
    print(summary("after SIGSTOP", paused) + f" (the lease, {args.lease_ms} ms, bounds it)")
    print(f"total              {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
