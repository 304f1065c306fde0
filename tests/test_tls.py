"""HTTPS: the coordinator serves TLS when given a certificate, and clients verify it."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.coordinator_client import CoordinatorClient, CoordinatorError
from coordinator_harness import CoordinatorProcess
from shared.errors import SuanliError
from shared.identity import PrivateKey
from shared.transport import check_coordinator_url


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "suanli test coordinator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def tls_coordinator(tmp_path: Path) -> tuple[CoordinatorProcess, Path]:
    cert, key = _self_signed(tmp_path)
    process = CoordinatorProcess(tmp_path, scheme="https",
                                 extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]).start()
    yield process, cert
    process.stop()


async def test_agent_enrols_over_verified_https(tls_coordinator: tuple[CoordinatorProcess, Path]) -> None:
    process, cert = tls_coordinator
    token = process.add_provider(1)
    async with CoordinatorClient(process.url, PrivateKey.generate(), ca_file=str(cert)) as client:
        answer = await client.enrol(token, "tls-host")
    assert answer["agent_id"]


async def test_unverified_certificate_is_refused(tls_coordinator: tuple[CoordinatorProcess, Path]) -> None:
    process, _ = tls_coordinator
    token = process.add_provider(1)
    async with CoordinatorClient(process.url, PrivateKey.generate()) as client:
        with pytest.raises(CoordinatorError, match="cannot reach|certificate"):
            await client.enrol(token, "tls-host")
    # the token was never redeemed: nothing reached the coordinator
    async with CoordinatorClient(process.url, PrivateKey.generate(), ca_file=str(process.workdir / "cert.pem")) as client:
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
