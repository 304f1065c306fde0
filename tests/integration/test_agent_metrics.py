"""The agent's /metrics, scraped over HTTP from a real `suanli-agent run` over the fake NVML:
the DCGM exporter's names, labels and units, an injected XID, and Suanli's own counters."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from agent_harness import AgentProcess
from coordinator_harness import BIN, FAST_SETTINGS, Api, CoordinatorProcess
from databases import new_database
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu, write_config
from prometheus_client.parser import text_string_to_metric_families

MIB = 1 << 20
GPUS = [
    FakeGpu(
        uuid="GPU-5e1f0c2a-0000-4000-8000-000000000001",
        util=37,
        memory_used=12_345 * MIB + 77,
        temperature=61,
        power_mw=312_500,
        energy_base_mj=9_000_000,
    ),
    FakeGpu(
        uuid="GPU-5e1f0c2a-0000-4000-8000-000000000002",
        util=0,
        memory_used=0,
        temperature=38,
        power_mw=80_000,
    ),
]
DCGM_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}
# prometheus-client's parser names a counter's samples ..._total, whatever the text says;
# the raw text is checked for dcgm-exporter's own name
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"
UNHURRIED = {**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def by_gpu(samples: Samples, name: str) -> dict[str, float]:
    return {labels["UUID"]: value for labels, value in samples.get(name, [])}


def single(samples: Samples, name: str) -> float:
    [(_, value)] = samples[name]
    return value


class Stack:
    def __init__(self, coordinator: CoordinatorProcess, agent: AgentProcess, api: Api) -> None:
        self.coordinator, self.agent, self.api = coordinator, agent, api
        self.url = f"http://{agent.settings['metrics_listen']}/metrics"

    async def until(self, check: object, what: str, timeout_s: float = 30) -> Samples:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                samples = await scrape(self.url)
                if check(samples):  # type: ignore[operator]
                    return samples
            except aiohttp.ClientConnectionError:
                samples = {}
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {samples}\n{self.agent.log()[-3000:]}")
            await asyncio.sleep(0.2)


@pytest.fixture
def docker_coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator",
        settings=UNHURRIED,
        database=new_database("sqlite", tmp_path / "coordinator"),
    ).start()
    try:
        yield coordinator
    finally:
        coordinator.stop()


@pytest.fixture
async def stack(
    tmp_path: Path, docker_service: EngineService, docker_coordinator: CoordinatorProcess
) -> AsyncIterator[Stack]:
    agent = AgentProcess(tmp_path / "agent", docker_coordinator, docker_service.socket, GPUS)
    agent.settings["metrics_listen"] = f"127.0.0.1:{free_port()}"
    agent.workdir.mkdir()
    agent.enroll()
    agent.start()
    api = Api(docker_coordinator.url, docker_coordinator.add_enterprise(5))
    try:
        yield Stack(docker_coordinator, agent, api)
    finally:
        await api.close()
        agent.stop()
        for container in docker_service.containers_of(agent.agent_id):
            docker_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def test_gpu_figures_carry_the_dcgm_exporter_names_labels_and_units(stack: Stack) -> None:
    samples = await stack.until(
        lambda s: len(s.get("DCGM_FI_DEV_GPU_UTIL", [])) == 2, "two GPUs in /metrics"
    )
    first, second = (gpu.uuid for gpu in GPUS)
    for name in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        ENERGY,
        "DCGM_FI_DEV_XID_ERRORS",
    ):
        labels = {labels["UUID"]: labels for labels, _ in samples[name]}
        assert set(labels) == {first, second}, name
        assert set(labels[first]) == DCGM_LABELS, name
        assert labels[first]["gpu"] == "0" and labels[second]["gpu"] == "1"
        assert labels[first]["device"] == "nvidia0"
        assert labels[first]["modelName"] == "NVIDIA H100 80GB HBM3"
        assert labels[first]["Hostname"] == socket.gethostname()
        assert labels[first]["DCGM_FI_DRIVER_VERSION"] == "550.54.15"
    assert by_gpu(samples, "DCGM_FI_DEV_GPU_UTIL") == {first: 37, second: 0}
    assert by_gpu(samples, "DCGM_FI_DEV_FB_USED") == {first: 12_345, second: 0}, "whole MiB"
    assert by_gpu(samples, "DCGM_FI_DEV_GPU_TEMP") == {first: 61, second: 38}
    assert by_gpu(samples, "DCGM_FI_DEV_POWER_USAGE") == {first: 312.5, second: 80.0}, "watts"
    energy = by_gpu(samples, ENERGY)
    assert energy[first] > 9_000_000 and energy[second] > 0, "mJ since the driver loaded"
    assert by_gpu(samples, "DCGM_FI_DEV_XID_ERRORS") == {first: 0, second: 0}
    assert single(samples, "suanli_agent_nvml_up") == 1
    assert single(samples, "suanli_agent_gpus") == 2
    async with aiohttp.ClientSession() as session, session.get(stack.url) as response:
        text = await response.text()
    # the types dcgm-exporter declares, and its counter's name without a _total suffix
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in text
    assert "# TYPE DCGM_FI_DEV_XID_ERRORS gauge\n" in text
    assert "# TYPE DCGM_FI_DEV_FB_USED gauge\n" in text

    # figures follow the daemon's samples; energy, a counter, only grows
    write_config(stack.agent.nvml_config, [replace(GPUS[0], util=88, temperature=70), GPUS[1]])
    later = await stack.until(
        lambda s: by_gpu(s, "DCGM_FI_DEV_GPU_UTIL").get(first) == 88, "the new utilisation"
    )
    assert by_gpu(later, "DCGM_FI_DEV_GPU_TEMP")[first] == 70
    assert by_gpu(later, ENERGY)[first] > energy[first]


async def test_an_injected_xid_shows_as_dcgm_does_and_is_counted(stack: Stack) -> None:
    second = GPUS[1].uuid
    await stack.until(
        lambda s: single(s, "suanli_agent_xid_watched_gpus") == 2, "both GPUs watched for XIDs"
    )
    write_config(stack.agent.nvml_config, [GPUS[0], replace(GPUS[1], xids=(79,))])
    samples = await stack.until(
        lambda s: by_gpu(s, "DCGM_FI_DEV_XID_ERRORS").get(second) == 79, "XID 79 on GPU 1"
    )
    assert by_gpu(samples, "DCGM_FI_DEV_XID_ERRORS")[GPUS[0].uuid] == 0
    assert by_gpu(samples, "suanli_agent_xid_errors_total")[second] == 1
    write_config(stack.agent.nvml_config, [GPUS[0], replace(GPUS[1], xids=(79, 48))])
    samples = await stack.until(
        lambda s: by_gpu(s, "DCGM_FI_DEV_XID_ERRORS").get(second) == 48, "the last XID, 48"
    )
    assert by_gpu(samples, "suanli_agent_xid_errors_total") == {GPUS[0].uuid: 0, second: 2}
    assert "GPU GPU-5e1f0c2a-0000-4000-8000-000000000002 reported critical XID 48" in (
        stack.agent.log()
    )


async def test_leases_receipts_and_earnings_move_after_a_job(stack: Stack) -> None:
    before = await stack.until(lambda s: "suanli_agent_leases_running" in s, "Suanli's figures")
    for name in (
        "suanli_agent_leases_running",
        "suanli_agent_receipts_spooled_total",
        "suanli_agent_receipts_accepted_total",
        "suanli_agent_receipts_rejected_total",
        "suanli_agent_earned_micro_yuan_total",
    ):
        assert single(before, name) == 0, name
    status, job = await stack.api.submit(
        image=BUSYBOX_IMAGE,
        command=["sleep", "3"],
        gpus=1,
        max_price_per_gpu_hour_micro_yuan=10_000_000,
    )
    assert status == 201, job
    await stack.until(lambda s: single(s, "suanli_agent_leases_running") == 1, "a running lease")
    finished = await stack.api.wait_for(job["id"], lambda j: j["state"] == "succeeded", 60)
    charged = await stack.api.wait_for(job["id"], lambda j: j["charged_micro_yuan"] > 0, 30)
    samples = await stack.until(
        lambda s: (
            single(s, "suanli_agent_earned_micro_yuan_total") == charged["charged_micro_yuan"]
            and single(s, "suanli_agent_leases_running") == 0
        ),
        "earnings equal to what the job was charged",
    )
    (receipt_count,) = stack.coordinator.rows(
        "SELECT COUNT(*) FROM receipts WHERE lease_id = ?", [finished["lease_id"]]
    )[0]
    assert single(samples, "suanli_agent_receipts_accepted_total") == receipt_count >= 2
    assert single(samples, "suanli_agent_receipts_spooled_total") == receipt_count
    assert single(samples, "suanli_agent_receipts_rejected_total") == 0
    assert single(samples, "suanli_agent_heartbeat_failures_total") == 0

    # the coordinator goes away: heartbeats fail and /metrics counts them
    stack.coordinator.stop()
    await stack.until(
        lambda s: single(s, "suanli_agent_heartbeat_failures_total") >= 1, "a failed heartbeat"
    )


async def test_the_endpoint_is_not_reachable_on_another_address_by_default(
    stack: Stack,
) -> None:
    await stack.until(lambda s: "suanli_agent_gpus" in s, "metrics on loopback")
    port = int(stack.agent.settings["metrics_listen"].rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this host has no address but loopback")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()


async def test_a_hostile_scraper_gets_metrics_only(stack: Stack) -> None:
    await stack.until(lambda s: "suanli_agent_gpus" in s, "metrics on loopback")
    base = stack.url.removesuffix("/metrics")
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url, data=b"x" * (1 << 20)) as response:
            assert response.status in (405, 413)
        for path in ("/", "/metrics/../state/key", "/metrics?name[]=x" + "x" * 4000):
            async with session.get(base + path) as response:
                assert response.status != 200 or path.startswith("/metrics?"), path
        async with session.get(stack.url, headers={"X-Junk": "x" * 20_000}) as response:
            assert response.status == 400
    assert "suanli_agent_gpus" in await scrape(stack.url), "still serving"


async def test_a_taken_port_leaves_the_agent_running_without_metrics(
    tmp_path: Path, docker_service: EngineService, docker_coordinator: CoordinatorProcess
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    agent = AgentProcess(tmp_path / "agent", docker_coordinator, docker_service.socket, GPUS)
    agent.settings["metrics_listen"] = f"127.0.0.1:{squatter.getsockname()[1]}"
    agent.workdir.mkdir()
    agent.enroll()
    agent.start()
    api = Api(docker_coordinator.url, docker_coordinator.add_enterprise(5))
    try:
        deadline = time.monotonic() + 30
        while "cannot listen there" not in agent.log():
            assert time.monotonic() < deadline, agent.log()[-3000:]
            await asyncio.sleep(0.2)
        assert f"metrics_listen = '{agent.settings['metrics_listen']}'" in agent.log()
        while True:  # the agent carries on: its GPUs reach the market
            _, market = await api.call("GET", "/v1/market")
            if market.get("models") and market["models"][0]["free"] == 2:
                break
            assert time.monotonic() < deadline, agent.log()[-3000:]
            await asyncio.sleep(0.2)
        assert agent.process is not None and agent.process.poll() is None, "still running"
    finally:
        squatter.close()
        await api.close()
        agent.stop()


def test_a_bad_metrics_listen_is_refused_naming_the_setting(tmp_path: Path) -> None:
    for value, words in (
        ("0.0.0.0:9400", "metrics_allow_remote = true"),
        ("127.0.0.1", 'expected host:port like "127.0.0.1:9400"'),
        ("127.0.0.1:99999", 'expected host:port like "127.0.0.1:9400"'),
        ("metrics.example.cn:9400", "an IP address or localhost"),
    ):
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\nmetrics_listen = "{value}"\n')
        result = subprocess.run(
            [BIN / "suanli-agent", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, value
        assert f'metrics_listen = "{value}"' in result.stderr, result.stderr
        assert words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


async def test_an_nvml_failure_shows_as_nvml_down_not_as_a_silent_zero(
    tmp_path: Path, docker_coordinator: CoordinatorProcess
) -> None:
    agent = AgentProcess(tmp_path / "agent", docker_coordinator, tmp_path / "no-engine.sock", GPUS)
    agent.settings["metrics_listen"] = f"127.0.0.1:{free_port()}"
    agent.workdir.mkdir()
    agent.enroll()
    write_config(agent.nvml_config, GPUS, init_error="DRIVER_NOT_LOADED")
    agent.start()
    try:
        stack = Stack(docker_coordinator, agent, Api(docker_coordinator.url, None))
        samples = await stack.until(lambda s: "suanli_agent_nvml_up" in s, "/metrics")
        assert single(samples, "suanli_agent_nvml_up") == 0
        assert single(samples, "suanli_agent_gpus") == 0
        assert "DCGM_FI_DEV_GPU_UTIL" not in samples
        # the driver comes back: the next sample finds the GPUs and NVML is up again
        write_config(agent.nvml_config, GPUS)
        samples = await stack.until(
            lambda s: (
                single(s, "suanli_agent_nvml_up") == 1 and single(s, "suanli_agent_gpus") == 2
            ),
            "NVML up again with both GPUs",
        )
        await stack.api.close()
    finally:
        agent.stop()
