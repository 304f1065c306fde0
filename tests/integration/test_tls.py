"""HTTPS: the coordinator serves TLS when given a certificate, and clients verify it."""

from __future__ import annotations

from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess, self_signed

from agent.coordinator_client import CoordinatorClient
from shared.errors import SuanliError
from shared.http_client import CoordinatorError, check_coordinator_url
from shared.identity import PrivateKey


@pytest.fixture
def tls_coordinator(tmp_path: Path) -> tuple[CoordinatorProcess, Path]:
    cert, key = self_signed(tmp_path)
    process = CoordinatorProcess(
        tmp_path, scheme="https", extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]
    ).start()
    yield process, cert
    process.stop()


async def test_agent_enrols_over_verified_https(
    tls_coordinator: tuple[CoordinatorProcess, Path],
) -> None:
    process, cert = tls_coordinator
    token = process.add_provider(1)
    async with CoordinatorClient(process.url, PrivateKey.generate(), ca_file=str(cert)) as client:
        answer = await client.enrol(token, "tls-host")
    assert answer["agent_id"]


async def test_unverified_certificate_is_refused(
    tls_coordinator: tuple[CoordinatorProcess, Path],
) -> None:
    process, _ = tls_coordinator
    token = process.add_provider(1)
    async with CoordinatorClient(process.url, PrivateKey.generate()) as client:
        with pytest.raises(CoordinatorError, match="cannot reach|certificate"):
            await client.enrol(token, "tls-host")
    # the token was never redeemed: nothing reached the coordinator
    async with CoordinatorClient(
        process.url, PrivateKey.generate(), ca_file=str(process.workdir / "cert.pem")
    ) as client:
        assert (await client.enrol(token, "tls-host"))["agent_id"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8420", True),
        ("http://localhost:8420", True),
        ("http://[::1]:8420", True),
        ("https://coordinator.example.cn", True),
        ("http://coordinator.example.cn", False),
        ("http://10.0.0.5:8420", False),
        ("ftp://127.0.0.1", False),
        ("127.0.0.1:8420", False),
        ("https://c.example/?token=x", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_coordinator_url(url + "/") == url
    else:
        with pytest.raises(SuanliError):
            check_coordinator_url(url)
