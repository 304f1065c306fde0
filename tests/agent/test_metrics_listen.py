"""`metrics_listen`: loopback host:port, "off", and a refusal naming the setting otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfigError, AgentSettings, load_agent_settings, metrics_address


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9400", ("127.0.0.1", 9400)),
        ("localhost:9500", ("localhost", 9500)),
        ("[::1]:9400", ("::1", 9400)),
        ("127.0.0.2:1", ("127.0.0.2", 1)),
        ("off", None),
        ("OFF", None),
        ("", None),
    ],
)
def test_loopback_addresses_and_off_are_accepted(
    value: str, address: tuple[str, int] | None
) -> None:
    assert metrics_address(AgentSettings(metrics_listen=value)) == address


def test_the_default_is_loopback_on_dcgm_exporters_port() -> None:
    assert metrics_address(AgentSettings()) == ("127.0.0.1", 9400)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0.0.0.0:9400", "not a loopback address"),
        ("[::]:9400", "not a loopback address"),
        ("192.168.1.5:9400", "metrics_allow_remote = true"),
        ("9400", "expected host:port"),
        (":9400", "expected host:port"),
        ("127.0.0.1:0", "expected host:port"),
        ("127.0.0.1:65536", "expected host:port"),
        ("127.0.0.1:-1", "expected host:port"),
        ("gpu-host.example.cn:9400", "an IP address or localhost"),
    ],
)
def test_other_values_are_refused_naming_the_setting(value: str, words: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        AgentSettings(metrics_listen=value).validate()
    assert f'metrics_listen = "{value}"' in str(caught.value) and words in str(caught.value)


def test_a_remote_address_needs_the_explicit_setting(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nmetrics_listen = "0.0.0.0:9400"\nmetrics_allow_remote = true\n')
    assert metrics_address(load_agent_settings(config)) == ("0.0.0.0", 9400)
    config.write_text('[agent]\nmetrics_allow_remote = "yes"\n')
    with pytest.raises(AgentConfigError, match="metrics_allow_remote"):
        load_agent_settings(config)
