"""Benchmark: what the idle agent daemon costs its host.

Starts `suanli-coordinator serve` on loopback (default settings: agents heartbeat every 10 s,
lease polls are held up to 20 s), enrols a real `suanli-agent run` with 8 fake NVML GPUs
(tests/fake_nvml), sampled at 1 Hz, with an engine socket that does not exist, and no jobs.
After a warm-up it samples the agent process once a second with psutil: CPU time over wall
time (percent of one core), RSS and USS. The goal is under 1 % of a core and under 80 MB.
The coordinator's CPU is printed for context, and so is what each part of the agent's
periodic work costs when timed alone (in a child process that loads the same fake NVML).

The fake NVML library re-reads its config file on every NVML call, which real NVML does not;
its share is estimated and printed, so that the figure can be read against a real driver.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the process harnesses live with the tests
sys.path.insert(0, str(REPO))

from agent_harness import AGENT_SETTINGS, AgentProcess  # noqa: E402
from coordinator_harness import CoordinatorProcess  # noqa: E402
from fake_nvml.fixture import FakeGpu, build, environment, write_config  # noqa: E402

GPU_COUNT = 8
GOAL_CPU_PCT = 1.0
GOAL_RSS_BYTES = 80_000_000  # 80 MB
MB = 1_000_000
GPUS = [
    FakeGpu(
        uuid=f"GPU-5a1c0000-0000-4000-8000-{i:012x}",
        power_mw=95_000 + 1_000 * i,
        temperature=35 + i,
    )
    for i in range(GPU_COUNT)
]
SETTINGS = {
    **AGENT_SETTINGS,
    "sample_interval_ms": 1000,
    "heartbeat_interval_s": 10,
    "receipt_interval_s": 60,
    "acceptance_deadline_s": 600,
    "gpu_mode": "auto",  # the default: asks the (missing) engine which GPU pinning it offers
}


# -- the measured run -------------------------------------------------------------------------


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
        return str(response.read().decode())


def _agent_requests(text: str) -> Counter[str]:
    """Requests the coordinator answered, by agent route, from its Prometheus histogram."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if "_count{" not in line or "/v1/agent/" not in line:
            continue
        route = re.search(r'"(/v1/agent/[^"]*)"', line)
        if route:
            counts[route.group(1)] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _gpus_in_market(text: str) -> int:
    total = 0
    for line in text.splitlines():
        if line.startswith("suanli_gpus{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _cpu_s(times: Any) -> float:
    return float(times.user + times.system)


def _schedstat_s(pid: int) -> float | None:
    """On-CPU time of all the process's threads in ns resolution (Linux schedstat), or None.

    psutil's cpu_times counts in clock ticks (10 ms), too coarse for a process that uses a
    few ms a second; a thread that exits in the window takes its time with it (the agent's
    threads are a pool that stays).
    """
    try:
        total = 0
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as handle:
                total += int(handle.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Sampler:
    """One process, read once a second."""

    def __init__(self, pid: int, uss: bool) -> None:
        self.process = psutil.Process(pid)
        self.uss = uss
        self.start_cpu = self.process.cpu_times()
        self.start_ctx = self.process.num_ctx_switches()
        self.last_cpu = _cpu_s(self.start_cpu)
        self.start_sched = self.last_sched = _schedstat_s(pid)
        self.per_second_pct: list[float] = []
        self.rss: list[int] = []
        self.uss_values: list[int] = []
        self.threads: list[int] = []

    def read(self, elapsed_s: float) -> None:
        with self.process.oneshot():
            cpu = _cpu_s(self.process.cpu_times())
            self.rss.append(self.process.memory_info().rss)
            self.threads.append(self.process.num_threads())
        if self.uss:
            try:
                self.uss_values.append(self.process.memory_full_info().uss)
            except (psutil.AccessDenied, AttributeError):
                self.uss = False
        sched = _schedstat_s(self.process.pid) if self.last_sched is not None else None
        if sched is not None and self.last_sched is not None:
            self.per_second_pct.append(100 * (sched - self.last_sched) / elapsed_s)
        else:
            self.per_second_pct.append(100 * (cpu - self.last_cpu) / elapsed_s)
        self.last_cpu, self.last_sched = cpu, sched

    def totals(self, wall_s: float) -> dict[str, Any]:
        end = self.process.cpu_times()
        ctx = self.process.num_ctx_switches()
        sched = _schedstat_s(self.process.pid)
        precise = (
            None
            if sched is None or self.start_sched is None
            else 100 * (sched - self.start_sched) / wall_s
        )
        return {
            "cpu_pct": 100 * (_cpu_s(end) - _cpu_s(self.start_cpu)) / wall_s,
            "sched_pct": precise,
            "user_s": end.user - self.start_cpu.user,
            "system_s": end.system - self.start_cpu.system,
            "ctx_per_s": (
                ctx.voluntary
                + ctx.involuntary
                - self.start_ctx.voluntary
                - self.start_ctx.involuntary
            )
            / wall_s,
        }


def measure(duration_s: float, warmup_s: float, keep: bool, breakdown: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="suanli-bench-agent-"))
    coordinator = CoordinatorProcess(workdir / "coordinator", settings={})
    agent = AgentProcess(
        workdir / "agent",
        coordinator,
        workdir / "no-engine.sock",
        GPUS,
        ask="12.00",
        settings=dict(SETTINGS),
    )
    try:
        coordinator.workdir.mkdir()
        agent.workdir.mkdir()
        build()
        coordinator.start()
        agent.enroll()
        started = time.monotonic()
        agent.start()
        assert agent.process is not None
        deadline = started + 30
        while _gpus_in_market(_metrics(coordinator.url)) < GPU_COUNT:
            if agent.process.poll() is not None:
                print(
                    "the agent exited before its first heartbeat (does it tolerate a missing "
                    f"container engine?):\n{agent.log()[-3000:]}",
                    file=sys.stderr,
                )
                return 1
            if time.monotonic() > deadline:
                print(
                    f"the coordinator never listed the agent's {GPU_COUNT} GPUs:\n"
                    f"{agent.log()[-3000:]}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.1)
        registered_s = time.monotonic() - started
        time.sleep(max(0.0, warmup_s - (time.monotonic() - started)))

        requests_before = _agent_requests(_metrics(coordinator.url))
        agent_sampler = Sampler(agent.process.pid, uss=True)
        coordinator_sampler = Sampler(coordinator.process.pid, uss=False)  # type: ignore[union-attr]
        t0 = last = time.monotonic()
        next_tick = t0 + 1
        print(
            f"measuring the idle agent for {duration_s:.0f} s "
            f"({GPU_COUNT} fake GPUs at 1 Hz, heartbeat 10 s) ...",
            flush=True,
        )
        while True:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            if agent.process.poll() is not None:
                print(f"the agent died during the run:\n{agent.log()[-3000:]}", file=sys.stderr)
                return 1
            agent_sampler.read(now - last)
            coordinator_sampler.read(now - last)
            last = now
            next_tick += 1
            if now - t0 >= duration_s - 0.01:
                break
        wall = time.monotonic() - t0
        agent_totals = agent_sampler.totals(wall)
        coordinator_totals = coordinator_sampler.totals(wall)
        requests = _agent_requests(_metrics(coordinator.url)) - requests_before
        alive = agent.process.poll() is None
        log_lines = agent.log().splitlines()
    finally:
        agent.stop()
        coordinator.stop()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rss, uss = agent_sampler.rss, agent_sampler.uss_values
    cpu_pct = agent_totals["cpu_pct"]
    print()
    print(
        f"agent    pid {agent_sampler.process.pid}, "
        f"{statistics.median(agent_sampler.threads):.0f} threads, "
        f"GPUs listed by the coordinator {registered_s:.1f} s after start"
    )
    print(
        f"  CPU    {cpu_pct:6.3f} % of one core over {wall:.1f} s "
        f"(user {agent_totals['user_s']:.3f} s, system {agent_totals['system_s']:.3f} s)   "
        f"goal < {GOAL_CPU_PCT:g} %  {'ok' if cpu_pct < GOAL_CPU_PCT else 'MISSED'}"
    )
    if agent_totals["sched_pct"] is not None:
        print(
            f"         {agent_totals['sched_pct']:6.3f} % by the scheduler's ns counters "
            "(psutil counts 10 ms ticks, so the line above is coarse)"
        )
    print(
        f"         per second: median {statistics.median(agent_sampler.per_second_pct):.2f} %, "
        f"max {max(agent_sampler.per_second_pct):.2f} %; "
        f"{agent_totals['ctx_per_s']:.1f} context switches/s"
    )
    print(
        f"  RSS    max {max(rss) / MB:6.1f} MB, mean {statistics.fmean(rss) / MB:6.1f} MB   "
        f"goal < {GOAL_RSS_BYTES / MB:.0f} MB  {'ok' if max(rss) < GOAL_RSS_BYTES else 'MISSED'}"
    )
    if uss:
        print(
            f"  USS    max {max(uss) / MB:6.1f} MB, mean {statistics.fmean(uss) / MB:6.1f} MB "
            "(memory no other process shares)"
        )
    else:
        print("  USS    not available on this platform")
    print(
        "  sent   "
        + (", ".join(f"{route} {count}" for route, count in sorted(requests.items())) or "nothing")
        + f" in {wall:.0f} s"
    )
    warnings = Counter(
        re.sub(r"^\S+ \S+ ", "", line)
        for line in log_lines
        if " WARNING " in line or " ERROR " in line
    )
    if warnings:
        print(
            "  log    "
            + "\n         ".join(f"{n}× {text[:150]}" for text, n in warnings.most_common(6))
        )
    print(
        f"  engine socket missing: the agent {'kept running' if alive else 'DID NOT survive'}"
        f"{' and heartbeated' if requests.get('/v1/agent/heartbeat') else ''}"
    )
    coordinator_pct = coordinator_totals["sched_pct"]
    if coordinator_pct is None:
        coordinator_pct = coordinator_totals["cpu_pct"]
    print(
        f"coordinator CPU {coordinator_pct:6.3f} % of one core, "
        f"RSS max {max(coordinator_sampler.rss) / MB:.1f} MB (context)"
    )
    if breakdown:
        print()
        component_costs()
    return 0


# -- what each part of the periodic work costs, alone -----------------------------------------


def component_costs() -> None:
    """Re-run this file in a child that loads the fake NVML, and print its timings."""
    workdir = Path(tempfile.mkdtemp(prefix="suanli-bench-agent-parts-"))
    try:
        config = write_config(workdir / "fake-nvml.conf", GPUS)
        result = subprocess.run(
            [sys.executable, __file__, "--component-costs-child"],
            env=environment(build(), config),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            print(f"component timings failed:\n{result.stderr[-2000:]}")
            return
        sys.stdout.write(result.stdout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_per_call(run: Any, count: int) -> float:
    """CPU seconds of this thread per call (the best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for _ in range(count):
            run()
        best = min(best, (time.thread_time() - start) / count)
    return best


def component_costs_child() -> None:
    import pynvml  # type: ignore[import-untyped]

    from agent.inventory import heartbeat_inventory, read_host
    from agent.nvml import NvmlSampler
    from shared.identity import PrivateKey
    from shared.signed_request import sign_request

    sampler = NvmlSampler()
    sampler.open()
    samples = sampler.sample()
    assert len(samples) == GPU_COUNT, samples

    # NVML calls per sample, counted by wrapping the binding's functions
    calls: Counter[str] = Counter()
    originals = {
        name: getattr(pynvml, name)
        for name in dir(pynvml)
        if name.startswith("nvmlDevice") or name == "nvmlDeviceGetCount"
    }

    def counting(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for name, function in originals.items():
        setattr(pynvml, name, counting(name, function))
    sampler.sample()
    for name, function in originals.items():
        setattr(pynvml, name, function)
    nvml_calls = sum(calls.values())

    sample_s = _cpu_per_call(sampler.sample, 100)
    nvml_call_s = _cpu_per_call(pynvml.nvmlDeviceGetCount, 2000)
    libc = ctypes.CDLL(None)
    ctypes_call_s = _cpu_per_call(libc.getpid, 20000)

    key = PrivateKey.generate()
    read_host(cpu_interval_s=None)

    def inventory() -> dict[str, Any]:
        return heartbeat_inventory(samples, "/", sampler.driver_version)

    inventory_s = _cpu_per_call(inventory, 200)
    body = {"ask_per_gpu_hour": 12_000_000, "inventory": inventory()}
    sign_s = _cpu_per_call(
        lambda: sign_request(key, "POST", "/v1/agent/heartbeat", body, time.time_ns() // 1_000_000),
        500,
    )
    host_s = _cpu_per_call(lambda: read_host("/", cpu_interval_s=None), 200)
    sampler.close()

    fake_share_s = nvml_calls * max(0.0, nvml_call_s - ctypes_call_s)
    print("component costs, each timed alone (CPU of one thread):")
    print(
        f"  NVML sample of {GPU_COUNT} GPUs   {sample_s * 1e3:7.3f} ms per sample "
        f"({nvml_calls} NVML calls; {sample_s * 100:.3f} % of a core at 1 Hz)"
    )
    print(
        f"    one pynvml call           {nvml_call_s * 1e6:7.1f} µs here, "
        "of which a bare ctypes call is "
        f"{ctypes_call_s * 1e6:.1f} µs; the fake re-reading its config accounts for about "
        f"{fake_share_s * 1e3:.2f} ms per sample"
    )
    print(
        f"  heartbeat inventory         {inventory_s * 1e3:7.3f} ms "
        f"(host part via psutil {host_s * 1e3:.3f} ms)"
    )
    print(
        f"  heartbeat signing+encoding  {sign_s * 1e3:7.3f} ms "
        f"({len(json.dumps(body, default=str))} B of JSON-equivalent body)"
    )
    per_second = sample_s + (inventory_s + sign_s) / 10
    print(
        f"  sum at 1 Hz samples + 0.1 Hz heartbeats: {per_second * 100:.3f} % of a core "
        f"({(sample_s - fake_share_s) * 100 + (inventory_s + sign_s) * 10:.3f} % "
        "without the fake's file reads); "
        "the rest of the measured figure is the event loop, its thread hand-offs and HTTP"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration-s", type=float, default=60.0, help="measured seconds (default 60)"
    )
    parser.add_argument("--quick", action="store_true", help="measure 15 s instead")
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="seconds after the agent starts"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and its logs"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-part timings")
    parser.add_argument("--component-costs-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.component_costs_child:
        component_costs_child()
        return
    duration = 15.0 if args.quick else args.duration_s
    sys.exit(measure(duration, args.warmup_s, args.keep, not args.no_breakdown))


if __name__ == "__main__":
    main()
