"""The registry policy as a table of image references, and the settings that make it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.config import AgentConfigError, AgentSettings, load_agent_settings
from agent.registry_policy import (
    RegistryAddressRefused,
    RegistryPolicy,
    RegistryRefused,
    non_global_address,
    registry_host,
)

# What a fake DNS answers; a name not here does not resolve.
DNS = {
    "registry.example.cn": ["1.1.1.1", "2606:4700:4700::1111"],
    "ghcr.io": ["140.82.112.34"],
    "gitlab.corp.internal": ["10.0.0.5"],
    "half.example.cn": ["8.8.8.8", "192.168.1.9"],  # one private answer is enough to refuse
    "rebind.example.cn": ["::ffff:127.0.0.1"],
}


async def fake_resolve(name: str) -> Sequence[str]:
    if name not in DNS:
        raise OSError(f"Name or service not known: {name}")
    return DNS[name]


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        ("busybox", "docker.io"),
        ("busybox:1.36", "docker.io"),
        ("library/busybox@sha256:abc", "docker.io"),
        ("suanli-test/busybox:1", "docker.io"),
        ("docker.io/library/busybox", "docker.io"),
        ("index.docker.io/library/busybox", "docker.io"),
        ("registry-1.docker.io/x/y", "docker.io"),
        ("registry.example.cn/team/train:1.4", "registry.example.cn"),
        ("Registry.Example.CN/team/train", "registry.example.cn"),
        ("ghcr.io/org/img@sha256:abc", "ghcr.io"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000"),
        ("localhost/x", "localhost"),
        ("LOCALHOST/x", "localhost"),  # upper case makes it a host, as Docker reads it
        ("[::1]:5000/x", "[::1]:5000"),
        ("myhost:5000/x:tag", "myhost:5000"),
    ],
)
def test_registry_host_is_read_as_docker_reads_it(ref: str, host: str) -> None:
    assert registry_host(ref) == host


@pytest.mark.parametrize(
    "ref",
    [
        "127.0.0.1:5000/x",
        "127.0.0.53/x",
        "0.0.0.0:5000/x",  # connects to the host itself
        "localhost:5000/x",
        "localhost/x",
        "LocalHost:80/x",
        "localhost.:5000/x",
        "registry.localhost/x",
        "[::1]:5000/x",
        "[::]:5000/x",
        "[::ffff:127.0.0.1]:5000/x",
        "169.254.169.254/latest",  # the cloud metadata service
        "[fe80::1]/x",
        "10.1.2.3/x",
        "172.16.0.1:443/x",
        "172.31.255.254/x",
        "192.168.1.1/x",
        "100.64.0.1/x",  # CGNAT, RFC 6598
        "100.127.255.254/x",
        "[fc00::1]/x",
        "[fd12:3456::1]:5000/x",
        "224.0.0.1/x",
    ],
)
async def test_non_global_registry_hosts_are_refused_by_name(ref: str) -> None:
    policy = RegistryPolicy()
    with pytest.raises(
        RegistryRefused, match="the provider's registry policy refuses registry"
    ) as caught:
        policy.check_name(ref)
    assert caught.value.code == "registry_refused"
    assert (
        caught.value.detail
        == f"the provider's registry policy refuses registry {registry_host(ref)}"
    )
    with pytest.raises(RegistryRefused):
        await policy.check(ref, fake_resolve)


@pytest.mark.parametrize(
    "ref",
    [
        "busybox",
        "suanli-test/busybox:1",
        "registry.example.cn/t/x:1",
        "ghcr.io/org/img",
        "8.8.8.8/x",
        "[2606:4700:4700::1111]:443/x",
        "172.32.0.1/x",
        "100.128.0.1/x",
    ],
)
async def test_public_registry_hosts_pass(ref: str) -> None:
    policy = RegistryPolicy()
    assert await policy.check(ref, fake_resolve) == registry_host(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "gitlab.corp.internal/x",
        "half.example.cn/x",
        "rebind.example.cn:5000/x",
        "nowhere.invalid/x",
    ],
)
async def test_names_that_resolve_privately_or_not_at_all_read_as_a_pull_failure(ref: str) -> None:
    policy = RegistryPolicy()
    assert policy.check_name(ref) == registry_host(ref), "the name alone is fine"
    with pytest.raises(RegistryAddressRefused) as caught:
        await policy.check(ref, fake_resolve)
    # The same words whatever the DNS said, and none of its answers.
    assert caught.value.code == "image_pull_failed"
    assert caught.value.detail == f"the provider's engine could not pull image {ref}"


async def test_numeric_forms_of_loopback_are_caught_by_resolving() -> None:
    # "127.1" and "2130706433" are not addresses to `ipaddress`, but the resolver (and so an
    # engine using it) reads them as 127.0.0.1.
    policy = RegistryPolicy()
    for ref in ("127.1:5000/x", "2130706433:5000/x"):
        with pytest.raises(RegistryAddressRefused):
            await policy.check(ref)


async def test_the_allow_list_limits_hosts() -> None:
    policy = RegistryPolicy(allow=("registry.example.cn", "*.mirror.example.cn", "docker.io"))
    for ref in (
        "busybox",
        "registry.example.cn/t/x",
        "registry.example.cn:443/t/x",
        "a.mirror.example.cn/x",
    ):
        policy.check_name(ref)
    for ref in ("ghcr.io/x", "mirror.example.cn/x", "evil-registry.example.cn/x"):
        with pytest.raises(RegistryRefused, match=f"refuses registry {registry_host(ref)}$"):
            policy.check_name(ref)
    with pytest.raises(RegistryRefused, match="docker.io"):
        RegistryPolicy(allow=("registry.example.cn",)).check_name("busybox")


async def test_an_operator_can_allow_a_private_mirror_explicitly() -> None:
    policy = RegistryPolicy(allow=("10.0.0.5:5000", "gitlab.corp.internal"), refuse_private=False)
    assert await policy.check("10.0.0.5:5000/team/x", fake_resolve) == "10.0.0.5:5000"
    assert await policy.check("gitlab.corp.internal/x", fake_resolve) == "gitlab.corp.internal"
    with pytest.raises(RegistryRefused):
        policy.check_name("10.0.0.6:5000/x")


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("100.64.0.1", True),
        ("169.254.1.1", True),
        ("fc00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("not-an-address", False),
    ],
)
def test_non_global_address(address: str, refused: bool) -> None:
    assert non_global_address(address) is refused


def test_policy_settings_load_from_agent_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nregistry_allow = ["registry.example.cn", "docker.io"]\n'
        "registry_refuse_private = false\n"
    )
    policy = load_agent_settings(path).registry_policy
    assert policy == RegistryPolicy(
        allow=("registry.example.cn", "docker.io"), refuse_private=False
    )
    assert AgentSettings().registry_policy == RegistryPolicy(allow=None, refuse_private=True)
    for text, words in (
        ('registry_allow = "docker.io"', "list of registry hosts"),
        ('registry_allow = ["a b"]', "registry hosts like"),
        ('registry_refuse_private = "no"', "must be a bool"),
    ):
        path.write_text(f"[agent]\n{text}\n")
        with pytest.raises(AgentConfigError, match=words):
            load_agent_settings(path)
