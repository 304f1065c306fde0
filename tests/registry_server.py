"""A real private registry for tests: Debian's `docker-registry` (the Distribution registry)
on loopback, with htpasswd (bcrypt) auth and TLS under a CA the test makes.

`htpasswd -B` (apache2-utils) writes the bcrypt line: a system tool, as the registry itself
is, rather than a Python package added to the project's test dependencies for one line.

The registry listens on this host's own non-loopback address when it has one: dockerd treats
every registry on 127.0.0.0/8 as insecure and checks no certificate there. Engines trust the
CA only in the tests' own instances: `trust_in_podman` writes it where Podman looks
($HOME/.config/containers/certs.d/HOST:PORT/, HOME being the test engine's own), and
`ca_bundle` makes the SSL_CERT_FILE a test's own dockerd is started with (dockerd 20.10 reads
certs.d only under /etc/docker, the host's).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coordinator_harness import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from engines import EngineService, unavailable

USERNAME = "team"
PASSWORD = "s3cret-registry-pw-91c4f0"
START_TIMEOUT_S = 20.0
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def own_address() -> str:
    """This host's address on its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


@dataclass
class Registry:
    workdir: Path
    address: str
    port: int
    ca_path: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def verified_by_docker(self) -> bool:
        return not self.address.startswith("127.")

    def ca_bundle(self, directory: Path) -> Path:
        """The system's CAs and the test's, for a test dockerd's SSL_CERT_FILE."""
        system = SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.exists() else b""
        bundle = directory / "ca-bundle.crt"
        bundle.write_bytes(system + b"\n" + self.ca_path.read_bytes())
        return bundle

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "registry.log").read_text(errors="replace")
        return ""

    def auth(self, password: str = PASSWORD) -> dict[str, str]:
        return {"username": USERNAME, "password": password, "serveraddress": self.host}

    def status(self, path: str, password: str | None = PASSWORD) -> int:
        """The registry's HTTP status for GET path, verifying its certificate with the CA."""
        request = urllib.request.Request(f"https://{self.host}{path}")
        request.add_header("Accept", MANIFEST_TYPES)
        if password is not None:
            token = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0  # not listening yet

    def trust_in_podman(self, engine: EngineService) -> None:
        certs = self._podman_certs(engine)
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.ca_path, certs / "ca.crt")

    def trusted_by(self, engine: EngineService) -> bool:
        return (self._podman_certs(engine) / "ca.crt").exists()

    def _podman_certs(self, engine: EngineService) -> Path:
        return engine.workdir / "home" / ".config" / "containers" / "certs.d" / self.host

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _certificates(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for `address` it signs: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "suanli test registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def serve_registry(workdir: Path) -> Iterator[Registry]:
    """Start the registry, yield it once it answers over TLS, and stop it."""
    missing = [name for name in ("docker-registry", "htpasswd") if shutil.which(name) is None]
    if missing:
        unavailable(
            f"private image tests need {', '.join(missing)} (docker-registry, apache2-utils); "
            "run scripts/install-test-deps as root"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    address = own_address()
    ca, cert, key = _certificates(workdir, address)
    line = subprocess.run(
        ["htpasswd", "-B", "-b", "-n", USERNAME, PASSWORD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (workdir / "htpasswd").write_text(line + "\n")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
        "http": {
            "addr": f"{address}:{port}",
            "tls": {"certificate": str(cert), "key": str(key)},
        },
        "auth": {"htpasswd": {"realm": "suanli-test", "path": str(workdir / "htpasswd")}},
    }
    # YAML is a superset of JSON: the registry reads this as its config.yml
    (workdir / "config.yml").write_text(json.dumps(config))
    with (workdir / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(workdir / "config.yml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    registry = Registry(workdir, address, port, ca, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while registry.status("/v2/") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start:\n{registry.log()[-2000:]}")
            time.sleep(0.1)
        yield registry
    finally:
        registry.stop()
