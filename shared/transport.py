"""Where credentials may travel: HTTPS anywhere, plain HTTP only to loopback."""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import urlsplit

from shared.errors import SuanliError


class TransportError(SuanliError):
    """A coordinator URL would expose credentials, or its TLS settings are unusable."""

    code = "insecure_transport"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_coordinator_url(url: str) -> str:
    """Return the URL without a trailing slash, refusing plain HTTP to anything but loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"coordinator URL {url!r} must look like https://host[:port]")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise TransportError(
            f"refusing to send credentials over plain HTTP to {parts.hostname}; use https:// "
            "(plain HTTP is allowed only to loopback)"
        )
    if parts.query or parts.fragment:
        raise TransportError(f"coordinator URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the coordinator's certificate against the system store or a given CA file."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot use CA file {ca_file}: {exc}") from None
