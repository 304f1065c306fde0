"""Where the coordinator is and how it is reached: one URL, or an ordered list of them (a
leader and its standbys on one database), and the TLS that verifies it. Each URL is checked so
that credentials travel only over HTTPS or to loopback, and an address a coordinator names as
the leader counts only when it is one of the list's: a rogue or misconfigured standby cannot
send a client's token or signed requests elsewhere.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

from shared.errors import SuanliError

DEFAULT_PORTS = {"http": 80, "https": 443}


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
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise TransportError(f"coordinator URL {url!r} has a port that is not a number") from None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise TransportError(
            f"refusing to send credentials over plain HTTP to {parts.hostname}; use https:// "
            "(plain HTTP is allowed only to loopback)"
        )
    if parts.query or parts.fragment:
        raise TransportError(f"coordinator URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


def parse_coordinator_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """The coordinator URLs in `urls` (one URL, several separated by commas, or a list), each
    checked, in the order given; an empty item or one given twice is refused by name."""
    given = urls.split(",") if isinstance(urls, str) else list(urls)
    if not any(item.strip() for item in given):
        raise TransportError("no coordinator URL given")
    where = f"the coordinator URL list {urls!r}" if isinstance(urls, str) else "the URL list"
    checked: list[str] = []
    seen: dict[tuple[str, str, int, str], str] = {}
    for number, item in enumerate(given, 1):
        if not item.strip():
            raise TransportError(
                f"{where} has an empty item (number {number} of {len(given)}); separate "
                "URLs by single commas, as in https://a.example.cn,https://b.example.cn"
            )
        url = check_coordinator_url(item.strip())
        key = _base_key(url)
        assert key is not None  # a checked URL always has one
        if key in seen:
            same = "" if seen[key] == url else f" (as {seen[key]!r} before)"
            raise TransportError(f"coordinator URL {url!r} is given twice{same}")
        seen[key] = url
        checked.append(url)
    return tuple(checked)


def _base_key(url: str) -> tuple[str, str, int, str] | None:
    """What makes two base URLs the same coordinator: scheme, host, port and path, with case,
    default ports and trailing slashes set aside; None for what is no such URL."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if port is None or not parts.hostname:
        return None
    return scheme, parts.hostname, port, parts.path.rstrip("/")


def index_of(urls: Sequence[str], url: str) -> int | None:
    """The position in `urls` of the coordinator that `url` names, or None when it is none of
    them."""
    key = _base_key(url)
    if key is None:
        return None
    return next((n for n, known in enumerate(urls) if _base_key(known) == key), None)


def named_leader(
    urls: Sequence[str], leader: str | None, location: str | None, path: str
) -> int | None:
    """The position in `urls` of the leader a standby named: by its base URL (the refusal's
    `leader`), else by a `Location` of that base URL followed by the request's own `path`.
    None when it named none, or one outside the list (which is never followed)."""
    if leader is not None:
        return index_of(urls, leader)
    if location is None:
        return None
    try:
        parts = urlsplit(location)
    except ValueError:
        return None
    if not parts.path.endswith(path):
        return None
    base = parts._replace(path=parts.path[: len(parts.path) - len(path)], query="", fragment="")
    return index_of(urls, base.geturl())


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the coordinator's certificate against the system store or a given CA file."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot use CA file {ca_file}: {exc}") from None


def tls_for(url: str, ca_file: str | None = None) -> ssl.SSLContext | bool:
    """The TLS setting of requests to `url`: a verifying context for HTTPS (or whenever a CA
    file is given, so that a bad one is refused before anything is sent); aiohttp's default,
    which also verifies, otherwise."""
    if url.startswith("https://") or ca_file:
        return client_ssl_context(ca_file)
    return True
