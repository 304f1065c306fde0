"""The one HTTP client base under the coordinator's three clients (the `suanli` API client, the
auditor's log reader and the agent): where credentials may travel, TLS verification, timeouts,
no redirects, following the leader among several coordinators, and one error mapping. Each
client adds only its routes and its body encoding.

Credentials go over HTTPS anywhere and over plain HTTP only to loopback; the certificate is
verified against the system store or a given CA file. Redirects are never followed as such
(one could carry a token or a signed request elsewhere): a standby's `not_leader` refusal
moves the client to the leader it names only when that leader is one of the client's own
URLs, and otherwise to the next of them. Every failure is one `CoordinatorError` whose
message is a sentence for people: `Refused` when the coordinator answered with an error (its
`{"error", "detail"}` body's code and sentence; `NotLeader` for a standby's), `Unreachable`
when no answer came (`NotConnected` when nothing was sent), and `BadAnswer` when the answer
cannot be read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib.metadata import version
from typing import Any, Self, TypedDict, TypeVar, Unpack

import aiohttp

from shared.coordinator_urls import (
    TransportError,
    check_coordinator_url,
    client_ssl_context,
    named_leader,
    parse_coordinator_urls,
    tls_for,
)
from shared.errors import SuanliError

__all__ = [
    "MAX_ROUNDS",
    "BadAnswer",
    "CoordinatorError",
    "HttpClient",
    "NotConnected",
    "NotLeader",
    "Refused",
    "RequestOptions",
    "TransportError",
    "Unreachable",
    "check_coordinator_url",
    "client_ssl_context",
    "tls_for",
]

# One call tries each URL at most once a round; it starts another round, after a pause, only
# when a standby knew no leader yet or named one among the URLs that did not serve the call
# (a takeover under way). A call therefore sends at most MAX_ROUNDS * len(urls) requests and
# pauses at most (MAX_ROUNDS - 1) * ROUND_PAUSE_S = 3 s in all, beside the requests' own
# timeouts.
MAX_ROUNDS = 4
ROUND_PAUSE_S = 1.0
# A connection (with its TLS handshake) not made by then is given up, and the next URL tried:
# a leader whose machine disappeared answers nothing at all. Such a URL is not tried again
# within the call, so each vanished machine costs a call this long once.
CONNECT_TIMEOUT_S = 5.0
NOT_LEADER = "not_leader"


class RequestOptions(TypedDict, total=False):
    """What a request may add to its method and path: `query` parameters, a body (`data`, or a
    function making it afresh for each try: a signed request gets a new signature), `headers`
    beside the client's own, and a `timeout_s` other than the client's."""

    query: Mapping[str, str] | None
    data: bytes | Callable[[], bytes] | None
    headers: Mapping[str, str] | None
    timeout_s: float | None


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


class NotLeader(Refused):
    """The coordinator is a standby: it names the `leader` it knows (or None) and, for a
    redirect, the `location` it points at; neither is followed outside the client's URLs."""

    code = "not_leader"

    def __init__(self, detail: str, status: int, leader: str | None, location: str | None) -> None:
        super().__init__(detail, status, NOT_LEADER)
        self.leader = leader
        self.location = location


class Unreachable(CoordinatorError):
    """No answer came: the connection, the TLS handshake or the wait failed. The request may
    have reached the coordinator, so it is never sent again elsewhere within the same call."""

    code = "unreachable"


class NotConnected(Unreachable):
    """No connection could be made (refused, no such host, the connection or TLS handshake
    failed or, `timed_out`, took too long): nothing was sent, so the next coordinator URL may
    be tried."""

    code = "not_connected"

    def __init__(self, detail: str, timed_out: bool = False) -> None:
        super().__init__(detail)
        self.timed_out = timed_out


class BadAnswer(CoordinatorError):
    """The coordinator answered, but not with what the route promises."""

    code = "bad_answer"

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


@cache
def _user_agent(product: str) -> str:
    return f"{product}/{version('suanli')}"


# -- the client base --------------------------------------------------------------------------

_Error = TypeVar("_Error", bound=CoordinatorError)


class HttpClient:
    """The coordinator at one URL, or the leader among several, over one aiohttp session: its
    own, or one the caller shares between many clients (closed by the caller then).
    Subclasses say how bodies decode (`decode`, `body_kind`) and add their routes on top of
    `send` and `request`. `url` is the URL now in use: the one that answered last."""

    body_kind = "JSON"
    round_pause_s = ROUND_PAUSE_S

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        ca_file: str | None = None,
        timeout_s: float,
        product: str = "suanli",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.urls = parse_coordinator_urls(urls)
        self._current = 0
        secure = next((url for url in self.urls if url.startswith("https://")), self.urls[0])
        self._tls = tls_for(secure, ca_file)
        self.timeout_s = timeout_s
        self._headers = {"User-Agent": _user_agent(product), **(headers or {})}
        self._session = session
        self._owns_session = session is None

    @property
    def url(self) -> str:
        return self.urls[self._current]

    def next_url(self) -> None:
        """Use the next of the URLs given (after a refusal that named no leader to follow)."""
        self._current = (self._current + 1) % len(self.urls)

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
        """The body of a 2xx answer from the coordinator that serves the request: the URL in
        use first, then the leader a standby names (among this client's URLs only) or the
        next URL (see MAX_ROUNDS). Any other answer raises `Refused`; no answer
        `Unreachable`, naming every URL tried. A request that may have reached a coordinator
        is never sent to another within the call; the next call starts at the next URL."""
        tried: list[str] = []
        last: CoordinatorError | None = None
        start = self._current
        silent: set[int] = set()  # no connection within CONNECT_TIMEOUT_S: not tried again
        for round_number in range(MAX_ROUNDS):
            if round_number:
                await asyncio.sleep(self.round_pause_s)
            this_round = set(silent)
            index = self._first_untried(start, this_round)
            takeover = False
            while index is not None:
                this_round.add(index)
                tried.append(self.urls[index])
                try:
                    raw = await self._send_to(self.urls[index], method, path, options)
                except NotLeader as exc:
                    last = exc
                    leader = named_leader(self.urls, exc.leader, exc.location, path)
                    if leader is None and (exc.leader or exc.location) is not None:
                        _say(
                            exc,
                            f"it names {exc.leader or exc.location} as the leader, which "
                            "is none of the coordinator URLs given, so it is not followed",
                        )
                    else:
                        takeover = True  # a leader is being chosen, or one named has died: wait
                    if leader is None or leader in this_round:
                        index = self._first_untried(index + 1, this_round)
                    else:
                        index = start = leader
                    continue
                except NotConnected as exc:
                    last = exc
                    if exc.timed_out:
                        silent.add(index)
                    index = self._first_untried(index + 1, this_round)
                    continue
                except Unreachable as exc:
                    self._current = (index + 1) % len(self.urls)
                    raise self._naming(exc, tried) from None
                except Refused:
                    self._current = index
                    raise
                self._current = index
                return raw
            if not takeover:
                break
        assert last is not None  # the loop ends only after a failure
        raise self._naming(last, tried)

    def _first_untried(self, start: int, tried: set[int]) -> int | None:
        """The first URL from `start` on (round the list) not in `tried`; None: all were."""
        count = len(self.urls)
        return next(
            ((start + n) % count for n in range(count) if (start + n) % count not in tried), None
        )

    def _naming(self, error: _Error, tried: list[str]) -> _Error:
        urls = list(dict.fromkeys(tried))
        if len(urls) > 1:
            _say(error, f"tried {', '.join(urls)}")
        return error

    def _timeout(self, timeout_s: float | None) -> aiohttp.ClientTimeout:
        total = self.timeout_s if timeout_s is None else timeout_s
        return aiohttp.ClientTimeout(total=total, sock_connect=min(CONNECT_TIMEOUT_S, total))

    async def _send_to(self, url: str, method: str, path: str, options: RequestOptions) -> bytes:
        """One try at one URL: the body of a 2xx answer, or the error that says why not."""
        timeout = self._timeout(options.get("timeout_s"))
        data = options.get("data")
        try:
            async with self._http().request(
                method,
                url + path,
                params=options.get("query"),
                data=data() if callable(data) else data,
                headers={**self._headers, **(options.get("headers") or {})},
                ssl=self._tls,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                location = response.headers.get("Location")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise NotConnected(
                f"cannot verify the TLS certificate of the coordinator at {url} "
                f"({_os_reason(exc)}); pass --ca-file if it uses a private CA"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise NotConnected(
                f"the TLS handshake with the coordinator at {url} failed ({_os_reason(exc)})"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise NotConnected(
                f"cannot reach the coordinator at {url} ({_os_reason(exc)})"
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise NotConnected(
                f"cannot reach the coordinator at {url} (no connection within "
                f"{timeout.sock_connect:g} s)",
                timed_out=True,
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"the coordinator at {url} did not answer {method} {path} "
                f"within {timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"lost the connection to the coordinator at {url} ({exc.__class__.__name__}: {exc})"
            ) from None
        if not 200 <= status < 300:
            raise self._refusal(url, method, path, status, raw, location)
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
        self, url: str, method: str, path: str, status: int, raw: bytes, location: str | None
    ) -> Refused:
        try:
            body = self.decode(raw) if raw else None
        except (ValueError, SuanliError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            if body.get("error") == NOT_LEADER:
                leader = body.get("leader")
                named = leader if isinstance(leader, str) else None
                return NotLeader(body["detail"], status, named, location)
            return Refused(body["detail"], status, str(body.get("error") or "error"))
        if 300 <= status < 400:
            return Refused(
                f"the coordinator at {url} redirected {method} {path} to "
                f"{location or 'another address'}; redirects are not followed, since they "
                "could carry credentials elsewhere",
                status,
                "redirect",
            )
        return Refused(
            f"the coordinator at {url} answered {method} {path} with HTTP {status} "
            f"and no {self.body_kind} error body",
            status,
            "bad_response",
        )


def _say(error: CoordinatorError, aside: str) -> None:
    """Add an aside to the error's sentence (the error is this call's own, made for it)."""
    error.detail = f"{error.detail} ({aside})"
    error.args = (error.detail,)


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    return str(error.strerror or error) if error is not None else str(exc)
