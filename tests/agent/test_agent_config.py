"""Agent settings, state directory, enrolment command, self-test and lease GPU checks."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from coordinator_harness import BIN, CoordinatorProcess

from agent.config import AgentConfigError, AgentSettings, load_agent_settings
from agent.daemon import AgentDaemon
from agent.lease import LeaseRecord, LeaseTerms
from agent.nvml import GpuSample
from agent.runner import LeaseRunner
from agent.state import AgentState, NotEnrolled


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_settings_load_and_flags_override(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[agent]\nask_per_gpu_hour = "12.50"\noffered_gpus = [0, 2]\nreceipt_interval_s = 30\n',
    )
    settings = load_agent_settings(path).with_overrides(engine_socket="/run/podman/podman.sock")
    assert settings.ask_micro_yuan == 12_500_000
    assert settings.offered_gpus == [0, 2]
    assert (settings.receipt_interval_s, settings.engine_socket) == (30, "/run/podman/podman.sock")
    assert settings.acceptance_deadline_s == AgentSettings().acceptance_deadline_s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\nask_per_gpu_hour = 12.5\n", "quoted yuan amount"),
        ('[agent]\nask_per_gpu_hour = "12.5e0"\n', "not a plain decimal"),
        ("[agent]\nsurprise = 1\n", "unknown setting 'surprise'"),
        ('[agent]\nreceipt_interval_s = "60"\n', "receipt_interval_s must be a int"),
        ("[agent]\nreceipt_interval_s = 0\n", "receipt_interval_s must be positive"),
        ('[agent]\ngpu_mode = "magic"\n', "gpu_mode must be"),
        ('[agent]\noffered_gpus = ["0"]\n', "offered_gpus must be a list"),
        ("[agent\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        load_agent_settings(_write(tmp_path, text))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="no configuration file at"):
        load_agent_settings(tmp_path / "absent.toml")


def test_state_directory_is_private_and_key_0600(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state")
    key = state.key_for_enrolment()
    assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert state.key_for_enrolment().public == key.public, "an interrupted enrolment reuses its key"
    with pytest.raises(NotEnrolled, match="suanli-agent enroll"):
        state.load_key()


def test_enroll_command_registers_once(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path).start()
    try:
        token = coordinator.add_provider(1, max_hosts=5)
        state_dir = tmp_path / "agent-state"
        command = [
            BIN / "suanli-agent",
            "enroll",
            "--coordinator",
            coordinator.url,
            "--token",
            token,
            "--state-dir",
            str(state_dir),
        ]
        first = subprocess.run(command, capture_output=True, text=True, check=False)
        assert first.returncode == 0, first.stderr
        enrolment = json.loads((state_dir / "enrolment.json").read_text())
        assert enrolment["agent_id"] in first.stdout
        again = subprocess.run(command, capture_output=True, text=True, check=False)
        assert again.returncode == 1 and "already enrolled" in again.stderr
        bad = subprocess.run(
            [*command[:5], "sk_enr_wrong", "--state-dir", str(tmp_path / "other")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.returncode == 1 and "not known" in bad.stderr and "Traceback" not in bad.stderr
        plain = subprocess.run(
            [
                BIN / "suanli-agent",
                "enroll",
                "--coordinator",
                "http://192.0.2.1:8420",
                "--token",
                token,
                "--state-dir",
                str(tmp_path / "third"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert plain.returncode == 1 and "plain HTTP" in plain.stderr
    finally:
        coordinator.stop()


def test_coordinator_urls_load_as_a_list_and_the_old_key_as_one_item(tmp_path: Path) -> None:
    listed = load_agent_settings(
        _write(
            tmp_path,
            '[agent]\ncoordinator_urls = ["https://a.example.cn", "https://b.example.cn"]\n',
        )
    )
    assert listed.coordinators == ["https://a.example.cn", "https://b.example.cn"]
    one = load_agent_settings(
        _write(tmp_path, '[agent]\ncoordinator_url = "https://a.example.cn"\n')
    )
    assert one.coordinators == ["https://a.example.cn"]
    assert AgentSettings().coordinators is None
    flagged = one.with_coordinators("https://c.example.cn,https://d.example.cn").validate()
    assert flagged.coordinators == ["https://c.example.cn", "https://d.example.cn"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'coordinator_url = "https://a.example.cn"\ncoordinator_urls = ["https://b.example.cn"]',
            "coordinator_urls and coordinator_url are both set",
        ),
        ('coordinator_urls = "https://a.example.cn"', "coordinator_urls must be a list of URLs"),
        (
            'coordinator_urls = ["https://a.example.cn", "http://b.example.cn"]',
            "coordinator_urls: refusing to send credentials over plain HTTP to b.example.cn",
        ),
        (
            'coordinator_urls = ["https://a.example.cn", "https://a.example.cn/"]',
            "coordinator_urls: coordinator URL 'https://a.example.cn' is given twice",
        ),
        ("coordinator_urls = []", "coordinator_urls: no coordinator URL given"),
        ('coordinator_url = "ftp://a.example.cn"', "coordinator_url: coordinator URL 'ftp://"),
    ],
)
def test_bad_coordinator_urls_are_refused_by_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        load_agent_settings(_write(tmp_path, f"[agent]\n{text}\n"))
    assert message in caught.value.detail
    with pytest.raises(AgentConfigError, match="--coordinator: the coordinator URL list"):
        AgentSettings().with_coordinators("https://a.example.cn,,https://b.example.cn")


def test_an_enrolment_keeps_its_list_and_an_old_one_still_loads(tmp_path: Path) -> None:
    old = AgentState(tmp_path / "old")
    old.ensure()
    old.save_enrolment({"coordinator_url": "https://a.example.cn", "agent_id": "x"})
    assert old.coordinator_urls() == ["https://a.example.cn"]
    new = AgentState(tmp_path / "new")
    new.ensure()
    new.save_enrolment({"coordinator_urls": ["https://a.example.cn", "https://b.example.cn"]})
    assert new.coordinator_urls() == ["https://a.example.cn", "https://b.example.cn"]
    new.save_enrolment({"agent_id": "x"})
    with pytest.raises(NotEnrolled, match="names no coordinator URL"):
        new.coordinator_urls()


def test_enroll_and_self_test_take_a_list_and_skip_a_dead_url(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path).start()
    try:
        token = coordinator.add_provider(1)
        state_dir = tmp_path / "agent-state"
        with socket.socket() as dead:
            dead.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
            urls = f"http://127.0.0.1:{dead.getsockname()[1]},{coordinator.url}"
            enrol = subprocess.run(
                [BIN / "suanli-agent", "enroll", "--coordinator", urls, "--token", token]
                + ["--state-dir", str(state_dir)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert enrol.returncode == 0, enrol.stderr
            enrolment = json.loads((state_dir / "enrolment.json").read_text())
            assert enrolment["coordinator_urls"] == urls.split(",")
            checked = subprocess.run(
                [BIN / "suanli-agent", "self-test", "--state-dir", str(state_dir), "--json"]
                + ["--engine-socket", str(tmp_path / "no.sock")],
                capture_output=True,
                text=True,
                check=False,
            )
        checks = {c["check"]: c for c in json.loads(checked.stdout)}
        assert checks["coordinator"]["ok"], checks["coordinator"]["detail"]
        assert checks["coordinator"]["detail"].startswith(f"{coordinator.url} (the leader of 2)")
    finally:
        coordinator.stop()


def test_self_test_names_what_is_wrong(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            BIN / "suanli-agent",
            "self-test",
            "--state-dir",
            str(tmp_path / "none"),
            "--engine-socket",
            str(tmp_path / "no.sock"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert not checks["key"]["ok"] and "not enrolled" in checks["key"]["detail"]
    assert not checks["container engine"]["ok"]
    assert not checks["ask price"]["ok"]


def _sample(index: int, uuid: str, healthy: bool = True) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=uuid,
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 << 30,
        memory_used_bytes=0,
        compute_capability=(9, 0),
        power_limit_mw=700_000,
        utilization_gpu_pct=0,
        temperature_c=40,
        power_mw=100_000,
        energy_mj=0,
        ecc_uncorrected=0,
        retired_pages_pending=False,
        healthy=healthy,
        health_reason=None if healthy else "GPU is lost",
    )


async def test_a_lease_for_gpus_the_agent_cannot_give_is_refused(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state")
    state.key_for_enrolment()
    state.save_enrolment(
        {"coordinator_url": "http://127.0.0.1:9", "agent_id": "x", "provider_id": "p"}
    )
    daemon = AgentDaemon(AgentSettings(state_dir=str(state.directory), offered_gpus=[0, 1]), state)
    try:
        daemon.samples = {
            s.uuid: s
            for s in (_sample(0, "GPU-0"), _sample(1, "GPU-1", healthy=False), _sample(2, "GPU-2"))
        }

        def lease(*uuids: str, lease_id: str = "l") -> LeaseRecord:
            terms = LeaseTerms(lease_id=lease_id, job_id="j", gpu_uuids=uuids, price_per_gpu_hour=1)
            return LeaseRecord(terms, created_at_ms=0)

        assert daemon.gpus_unavailable(lease("GPU-0")) is None
        assert "not offered" in (daemon.gpus_unavailable(lease("GPU-2")) or "")
        assert "not offered" in (daemon.gpus_unavailable(lease("GPU-9")) or "")
        assert "unhealthy" in (daemon.gpus_unavailable(lease("GPU-1")) or "")
        busy = lease("GPU-0", lease_id="other")
        daemon._start_runner = lambda record: None  # type: ignore[method-assign]
        daemon.runners["other"] = LeaseRunner(daemon, busy)
        assert "already leased" in (daemon.gpus_unavailable(lease("GPU-0")) or "")
    finally:
        await daemon.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[coordinator]\nheartbeat_timeout_ms = "45s"\n', "heartbeat_timeout_ms must be a int"),
        ("[coordinator]\nsurprise = 1\n", "unknown setting 'surprise'"),
        ("[coordinator]\nreceipt_workers = -1\n", "receipt_workers must be from 0 to 256, not -1"),
        ("[coordinator]\nstop_grace_ms = -5\n", "stop_grace_ms must be 0 or more, not -5"),
        (
            "[coordinator]\nrejections_per_agent_per_day = -1\n",
            "rejections_per_agent_per_day must be 0 or more, not -1",
        ),
        ("[coordinator\n", "not valid TOML"),
    ],
)
def test_bad_coordinator_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    from coordinator.config import load_settings

    with pytest.raises(Exception, match=message):
        load_settings(_write(tmp_path, text))


def test_coordinator_settings_and_voucher_policy_share_one_file(tmp_path: Path) -> None:
    from coordinator.billing import VoucherPolicyError, load_voucher_policy
    from coordinator.config import load_settings

    path = _write(
        tmp_path, "[coordinator]\nheartbeat_timeout_ms = 60000\n\n[vouchers]\ncoverage_bps = 2500\n"
    )
    assert load_settings(path).heartbeat_timeout_ms == 60_000
    assert load_voucher_policy(path).coverage_bps == 2_500
    with pytest.raises(VoucherPolicyError, match="has no setting 'coverage'"):
        load_voucher_policy(_write(tmp_path, "[vouchers]\ncoverage = 1\n"))
