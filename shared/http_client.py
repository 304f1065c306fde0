"""The one HTTP client base under the coordinator's three clients (the `suanli` API client, the
auditor's log reader and the agent): where credentials may travel, TLS verification, timeouts,
no redirects, and one error mapping. Each client adds only its routes and its body encoding.

Credentials go over HTTPS anywhere and over plain HTTP only to loopback; the certificate is
verified against the system store or a given CA file. Redirects are never followed (one could
carry a token or a signed request elsewhere). Every failure is one `CoordinatorError` whose
message is a sentence for people: `Refused` when the coordinator answered with an error (its
`{"error", "detail"}` body's code and sentence), `Unreachable` when no answer came, and
`BadAnswer` when the answer cannot be read.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from collections.abc import Mapping
from functools import cache
from importlib.metadata import version
from typing import Any, Self, TypedDict, Unpack
from urllib.parse import urlsplit

import aiohttp

from shared.errors import SuanliError


class RequestOptions(TypedDict, total=False):
    """What a request may add to its method and path: `query` parameters, a body (`data`),
    `headers` beside the client's own, and a `timeout_s` other than the client's."""

    query: Mapping[str, str] | None
    data: bytes | None
    headers: Mapping[str, str] | None
    timeout_s: float | None


class TransportError(SuanliError):
    """A coordinator URL would expose credentials, or its TLS settings are unusable."""

    code = "insecure_transport"


class CoordinatorError(SuanliError):
    """A request to the coordinator did not succeed; the message is one sentence for people.
    `status` and `error` are the coordinator's HTTP status and error code, when it answered."""

    code = "coordinator_error"
    status: int | None = None
    error: str | None = None


class Refused(CoordinatorError):
    """The coordinator answered with an error: `status`, and its body's `error` and `detail`."""

    code = "refused"

    def __init__(self, detail: str, status: int, error: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error


class Unreachable(CoordinatorError):
    """No answer came: the connection, the TLS handshake or the wait failed."""

    code = "unreachable"


class BadAnswer(CoordinatorError):
    """The coordinator answered, but not with what the route promises."""

    code = "bad_answer"

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


# -- where credentials may travel -------------------------------------------------------------


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


def tls_for(url: str, ca_file: str | None = None) -> ssl.SSLContext | bool:
    """The TLS setting of requests to `url`: a verifying context for HTTPS (or whenever a CA
    file is given, so that a bad one is refused before anything is sent); aiohttp's default,
    which also verifies, otherwise."""
    if url.startswith("https://") or ca_file:
        return client_ssl_context(ca_file)
    return True


@cache
def _user_agent(product: str) -> str:
    return f"{product}/{version('suanli')}"


# -- the client base --------------------------------------------------------------------------


class HttpClient:
    """One coordinator, over one aiohttp session: its own, or one the caller shares between
    many clients (closed by the caller then). Subclasses say how bodies decode (`decode`,
    `body_kind`) and add their routes on top of `send` and `request`."""

    body_kind = "JSON"

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        timeout_s: float,
        product: str = "suanli",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = check_coordinator_url(url)
        self._tls = tls_for(self.url, ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"User-Agent": _user_agent(product), **(headers or {})}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    def decode(self, raw: bytes) -> Any:
        """A body as the routes of this client speak it; raises ValueError or SuanliError."""
        return json.loads(raw)

    async def send(
        self,
        method: str,
        path: str,
        **options: Unpack[RequestOptions],
    ) -> bytes:
        """The body of a 2xx answer; any other answer raises `Refused`, no answer
        `Unreachable`."""
        timeout_s = options.get("timeout_s")
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._http().request(
                method,
                self.url + path,
                params=options.get("query"),
                data=options.get("data"),
                headers={**self._headers, **(options.get("headers") or {})},
                ssl=self._tls,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                location = response.headers.get("Location")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(
                f"cannot verify the TLS certificate of the coordinator at {self.url} "
                f"({_os_reason(exc)}); pass --ca-file if it uses a private CA"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise Unreachable(
                f"the TLS handshake with the coordinator at {self.url} failed ({_os_reason(exc)})"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(
                f"cannot reach the coordinator at {self.url} ({_os_reason(exc)})"
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"the coordinator at {self.url} did not answer {method} {path} "
                f"within {timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"lost the connection to the coordinator at {self.url} "
                f"({exc.__class__.__name__}: {exc})"
            ) from None
        if not 200 <= status < 300:
            raise self._refusal(method, path, status, raw, location)
        return raw

    async def request(
        self,
        method: str,
        path: str,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """The decoded body of a 2xx answer; raises as `send` does, and `BadAnswer` when the
        body does not decode."""
        raw = await self.send(method, path, **options)
        try:
            return self.decode(raw)
        except (ValueError, SuanliError):
            raise BadAnswer(
                f"the coordinator at {self.url} answered {method} {path} with a body that is "
                f"not {self.body_kind}"
            ) from None

    def _refusal(
        self, method: str, path: str, status: int, raw: bytes, location: str | None
    ) -> Refused:
        try:
            body = self.decode(raw) if raw else None
        except (ValueError, SuanliError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return Refused(body["detail"], status, str(body.get("error") or "error"))
        if 300 <= status < 400:
            return Refused(
                f"the coordinator at {self.url} redirected {method} {path} to "
                f"{location or 'another address'}; redirects are not followed, since they "
                "could carry credentials elsewhere",
                status,
                "redirect",
            )
        return Refused(
            f"the coordinator at {self.url} answered {method} {path} with HTTP {status} "
            f"and no {self.body_kind} error body",
            status,
            "bad_response",
        )


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    return str(error.strerror or error) if error is not None else str(exc)
