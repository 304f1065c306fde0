"""Benchmark: how long a line a job prints takes to appear in `suanli job logs ID --follow`.

Starts a container engine as the tests do (dockerd by default, or Podman's service), a
coordinator and a real `suanli-agent run` on loopback, and posts a job that prints a line every
--interval-s seconds stamped with /proc/uptime, the same clock inside the container as out.
The follower runs as the `suanli` command; each line it prints is stamped when it is read.
Printed: the print-to-shown latency of each line, and their minimum, median, 90th percentile
and maximum. Expect at most about the agent's flush (1 s) plus the follower's poll (0.5 s),
and a small share for the engine, the coordinator and loopback. Needs root and the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the process harnesses live with the tests
sys.path.insert(0, str(REPO))

import engines  # noqa: E402
from agent_harness import AgentProcess  # noqa: E402
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess  # noqa: E402
from fake_nvml.fixture import FakeGpu  # noqa: E402

SUANLI = Path(sys.executable).parent / "suanli"
GPU = FakeGpu(uuid="GPU-1a7e0000-0000-4000-8000-000000000001")


def uptime_s() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


async def wait_for_market(api: Api, agent: AgentProcess) -> None:
    for _ in range(150):
        _, market = await api.call("GET", "/v1/market")
        if market.get("models") and market["models"][0]["free"] == 1:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the agent's GPU never reached the market:\n{agent.log()[-3000:]}")


async def follow(
    coordinator: CoordinatorProcess, token: str, lines: int, interval_s: float
) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}
    env |= {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": token}
    script = (
        f"i=0; while [ $i -lt {lines} ]; do echo tick $(cut -d' ' -f1 /proc/uptime); "
        f"i=$((i+1)); sleep {interval_s}; done"
    )
    submit = await asyncio.create_subprocess_exec(
        str(SUANLI), "job", "submit", "--image", engines.BUSYBOX_IMAGE, "--gpus", "1",
        "--cpus", "0.5", "--memory", "128MiB", "--max-duration", "30m",
        "--max-price-per-gpu-hour", "10", "--follow", "--", "sh", "-c", script,
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert submit.stdout is not None
    latencies: list[float] = []
    while True:
        raw = await submit.stdout.readline()
        if not raw:
            break
        shown = uptime_s()
        words = raw.decode().split()
        if len(words) == 2 and words[0] == "tick":
            latency = shown - float(words[1])
            latencies.append(latency)
            print(f"line {len(latencies):3d}: shown {latency * 1000:6.0f} ms after it was printed")
    await submit.wait()
    return latencies


async def measure(kind: str, lines: int, interval_s: float, workdir: Path) -> int:
    with contextlib.contextmanager(engines.serve)(kind) as engine:
        (workdir / "coordinator").mkdir()
        coordinator = CoordinatorProcess(workdir / "coordinator", settings=dict(FAST_SETTINGS))
        coordinator.start()
        agent = AgentProcess(workdir / "agent", coordinator, engine.socket, [GPU])
        agent.workdir.mkdir()
        token = coordinator.add_enterprise(1)
        api = Api(coordinator.url, token)
        try:
            agent.enroll()
            agent.start()
            await wait_for_market(api, agent)
            latencies = await follow(coordinator, token, lines, interval_s)
            with urllib.request.urlopen(coordinator.url + "/metrics", timeout=5) as answer:  # noqa: S310 - loopback
                metrics = answer.read().decode()
        finally:
            agent.stop()
            coordinator.stop()
            await api.close()
    if not latencies:
        print("no line came back", file=sys.stderr)
        return 1
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    print(
        f"{kind}: {len(ordered)} lines, print to shown: min {ordered[0] * 1000:.0f} ms, "
        f"median {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )
    chunks = [
        line for line in metrics.splitlines()
        if line.startswith("suanli_http_request_seconds_count") and "/v1/agent/logs" in line
    ]  # fmt: skip
    print("log chunks the coordinator answered:", *chunks, sep="\n  ")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=engines.KINDS, default="docker")
    parser.add_argument("--lines", type=int, default=20, help="lines the job prints (20)")
    parser.add_argument("--interval-s", type=float, default=1.7, help="seconds between lines (1.7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suanli-log-latency-") as workdir:
        sys.exit(asyncio.run(measure(args.engine, args.lines, args.interval_s, Path(workdir))))


if __name__ == "__main__":
    main()
