"""The one HTTP client base: every client maps the coordinator's answers to the same errors,
follows no redirect, and names the coordinator in one sentence when it cannot reach it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.coordinator_client import CoordinatorClient
from coordinator.client.api import CoordinatorApi
from coordinator.client.audit import LogClient
from shared import canonical
from shared.http_client import (
    BadAnswer,
    HttpClient,
    Refused,
    TransportError,
    Unreachable,
    check_coordinator_url,
    tls_for,
)
from shared.identity import PrivateKey

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _refusing(encode: Callable[[dict[str, str]], bytes]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=404, body=encode({"error": "not_found", "detail": "no job x"}))

    return handler


async def _api(url: str) -> Any:
    async with CoordinatorApi(url, "token") as api:
        return await api.job("x")


async def _log(url: str) -> Any:
    async with LogClient(url) as client:
        return await client.json("/v1/log/find", {"digest": "00"})


async def _agent(url: str) -> Any:
    async with CoordinatorClient(url, PrivateKey.generate()) as client:
        return await client.heartbeat(None, {})


@pytest.mark.parametrize(
    ("call", "encode"),
    [
        (_api, lambda body: json.dumps(body).encode()),
        (_log, lambda body: json.dumps(body).encode()),
        (_agent, canonical.encode),
    ],
    ids=["api", "audit", "agent"],
)
async def test_every_client_raises_the_same_refusal(
    call: Callable[[str], Awaitable[Any]], encode: Callable[[dict[str, str]], bytes]
) -> None:
    async with serving(_refusing(encode)) as url:
        with pytest.raises(Refused) as caught:
            await call(url)
    assert (caught.value.status, caught.value.error, caught.value.detail) == (
        404,
        "not_found",
        "no job x",
    )


async def test_a_redirect_is_refused_not_followed() -> None:
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"stolen": request.headers.get("Authorization")})

    async with serving(elsewhere) as other:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{other}/v1/account")

        async with serving(redirect) as url, CoordinatorApi(url, "secret") as api:
            with pytest.raises(Refused, match="redirects are not followed") as caught:
                await api.account()
    assert (caught.value.status, caught.value.error) == (307, "redirect")
    assert hits == []


async def test_an_answer_without_an_error_body_names_the_request() -> None:
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, text="short and stout")

    async with serving(teapot) as url, HttpClient(url, timeout_s=5) as client:
        with pytest.raises(Refused) as caught:
            await client.request("GET", "/v1/pot")
    assert caught.value.error == "bad_response"
    assert caught.value.detail == (
        f"the coordinator at {url} answered GET /v1/pot with HTTP 418 and no JSON error body"
    )


async def test_an_unreadable_success_is_a_bad_answer() -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"\xc1 not msgpack")

    async with serving(garbage) as url, CoordinatorClient(url, PrivateKey.generate()) as client:
        with pytest.raises(BadAnswer, match="not msgpack") as caught:
            await client.heartbeat(None, {})
    assert caught.value.status is None


async def test_no_answer_is_one_sentence_naming_the_coordinator() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with HttpClient(url, timeout_s=5) as client:
            with pytest.raises(Unreachable) as caught:
                await client.request("GET", "/v1/market")
    assert caught.value.detail.startswith(f"cannot reach the coordinator at {url} (")
    assert caught.value.status is None and caught.value.error is None


async def test_a_slow_answer_times_out_with_its_request_named() -> None:
    answer = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await answer.wait()
        return web.json_response({})

    async with serving(slow) as url, HttpClient(url, timeout_s=0.2) as client:
        with pytest.raises(Unreachable) as caught:
            await client.request("GET", "/v1/market")
        answer.set()
    assert caught.value.detail == (
        f"the coordinator at {url} did not answer GET /v1/market within 0.2 s"
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com", "plain HTTP"),
        ("ftp://127.0.0.1", "must look like"),
        ("https://example.com/?a=1", "query or fragment"),
    ],
)
def test_credentials_travel_only_over_https_or_to_loopback(url: str, words: str) -> None:
    with pytest.raises(TransportError, match=words):
        check_coordinator_url(url)


def test_tls_is_verified_and_a_bad_ca_file_is_refused_before_sending(tmp_path: Path) -> None:
    assert check_coordinator_url("http://[::1]:8080/") == "http://[::1]:8080"
    assert tls_for("http://127.0.0.1:8080") is True  # aiohttp's default: verified
    assert not isinstance(tls_for("https://example.com"), bool)
    with pytest.raises(TransportError, match="cannot use CA file"):
        tls_for("http://127.0.0.1:8080", str(tmp_path / "missing.pem"))


async def test_the_agent_signs_afresh_when_a_restarted_coordinator_refuses_an_old_signature() -> (
    None
):
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) < 3:
            refusal = {"error": "signed_before_restart", "detail": "sign it again"}
            return web.Response(status=401, body=canonical.encode(refusal))
        return web.Response(body=canonical.encode({"ok": True}))

    async with serving(handler) as url:
        assert await _agent(url) == {"ok": True}
    assert len(bodies) == 3
    assert len(set(bodies)) == 3  # each try is a new signature (new nonce), never a resend


async def test_the_agent_does_not_resend_after_any_other_refusal() -> None:
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        refusal = {"error": "unauthenticated", "detail": "replayed nonce"}
        return web.Response(status=401, body=canonical.encode(refusal))

    async with serving(handler) as url:
        with pytest.raises(Refused) as caught:
            await _agent(url)
    assert caught.value.error == "unauthenticated" and len(bodies) == 1
