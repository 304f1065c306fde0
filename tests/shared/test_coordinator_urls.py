"""Several coordinator URLs (a leader and its standbys): every client follows a standby's
`not_leader` answer to the leader, but only to a leader among its own URLs; skips a URL it
cannot connect to; never sends a request that may have arrived to a second coordinator; and
remembers the leader for the next call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any, TypeVar

import pytest
from aiohttp import web
from coordinator_harness import CoordinatorProcess, clean_env
from test_http_client import Handler, serving

from agent import coordinator_client
from agent.coordinator_client import CoordinatorClient
from coordinator.client import cli
from coordinator.client.api import CoordinatorApi
from coordinator.client.audit import LogClient
from shared import canonical, http_client
from shared.clock import now_ms
from shared.coordinator_urls import index_of, named_leader, parse_coordinator_urls
from shared.http_client import (
    MAX_ROUNDS,
    HttpClient,
    NotConnected,
    NotLeader,
    TransportError,
    Unreachable,
)
from shared.identity import PrivateKey
from shared.signed_request import open_request

SUANLI = Path(sys.executable).parent / "suanli"


class Coordinator:
    """A loopback server that records what reaches it and answers as its role says:
    `leader` serves, `standby` refuses as a standby that names `leader_url`, `slow` never
    answers until the test ends."""

    def __init__(self, role: str, msgpack: bool = False) -> None:
        self.role = role
        self.msgpack = msgpack
        self.leader_url: str | None = None
        self.redirect = True
        self.requests: list[tuple[str, str | None, bytes]] = []
        self.released = asyncio.Event()

    def body(self, fields: dict[str, Any]) -> bytes:
        return canonical.encode(fields) if self.msgpack else json.dumps(fields).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            (request.path_qs, request.headers.get("Authorization"), await request.read())
        )
        if self.role == "slow":
            await self.released.wait()
        if self.role in ("leader", "slow"):
            return web.Response(body=self.body({"served_by": self.role, "path": request.path}))
        refusal = {
            "error": "not_leader",
            "detail": "this coordinator is a standby",
            "leader": self.leader_url,
        }
        if self.leader_url is None:
            return web.Response(status=503, body=self.body(refusal), headers={"Retry-After": "1"})
        headers = {"Location": self.leader_url + request.path_qs} if self.redirect else {}
        return web.Response(status=307, body=self.body(refusal), headers=headers)


@asynccontextmanager
async def running(*coordinators: Coordinator | Handler) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        urls = [
            await stack.enter_async_context(serving(c.handle if isinstance(c, Coordinator) else c))
            for c in coordinators
        ]
        try:
            yield urls
        finally:
            for c in coordinators:
                if isinstance(c, Coordinator):
                    c.released.set()


@contextmanager
def closed_port() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


Client = TypeVar("Client", bound=HttpClient)


def _quick(client: Client) -> Client:
    client.round_pause_s = 0.01
    return client


async def test_a_standby_redirects_and_the_leader_is_remembered() -> None:
    standby, leader = Coordinator("standby"), Coordinator("leader")
    async with running(standby, leader) as (standby_url, leader_url):
        standby.leader_url = leader_url
        async with CoordinatorApi([standby_url, leader_url], "secret") as api:
            assert await api.cancel_job("j1") == {
                "served_by": "leader",
                "path": "/v1/jobs/j1/cancel",
            }
            assert api.url == leader_url
            await api.cancel_job("j2")
    assert [path for path, _, _ in standby.requests] == ["/v1/jobs/j1/cancel"]
    assert [path for path, _, _ in leader.requests] == ["/v1/jobs/j1/cancel", "/v1/jobs/j2/cancel"]
    assert {token for _, token, _ in leader.requests} == {"Bearer secret"}


async def test_a_standby_naming_the_leader_only_by_location_is_followed() -> None:
    leader = Coordinator("leader")
    async with running(leader) as (leader_url,):

        async def location_only(request: web.Request) -> web.Response:
            return web.Response(
                status=307,
                body=json.dumps({"error": "not_leader", "detail": "a standby"}).encode(),
                headers={"Location": leader_url + request.path_qs},
            )

        async with running(location_only) as (standby_url,):
            async with HttpClient([standby_url, leader_url], timeout_s=5) as client:
                answer = await client.request("GET", "/v1/market", query={"a": "1"})
    assert answer == {"served_by": "leader", "path": "/v1/market"}
    assert [path for path, _, _ in leader.requests] == ["/v1/market?a=1"]


async def test_no_leader_yet_is_waited_out_then_served() -> None:
    answers = [503, 503, 200]
    hits: list[str] = []

    async def taking_over(request: web.Request) -> web.Response:
        hits.append(request.path)
        status = answers[len(hits) - 1]
        if status == 503:
            refusal = {"error": "not_leader", "detail": "no leader yet", "leader": None}
            return web.json_response(refusal, status=503, headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    async with running(taking_over) as (url,), _quick(HttpClient(url, timeout_s=5)) as client:
        assert await client.request("POST", "/v1/jobs") == {"ok": True}
    assert hits == ["/v1/jobs"] * 3


async def test_a_standby_without_a_leader_sends_the_call_to_the_next_url() -> None:
    standby, leader = Coordinator("standby"), Coordinator("leader")
    async with running(standby, leader) as urls, HttpClient(urls, timeout_s=5) as client:
        assert (await client.request("POST", "/v1/jobs"))["served_by"] == "leader"
    assert len(standby.requests) == 1 and len(leader.requests) == 1


async def test_a_leader_outside_the_list_is_never_followed() -> None:
    rogue, standby = Coordinator("leader"), Coordinator("standby")
    async with running(rogue, standby) as (rogue_url, standby_url):
        standby.leader_url = rogue_url  # named in the body and in Location alike
        async with _quick(CoordinatorApi(standby_url, "secret")) as api:
            with pytest.raises(NotLeader) as caught:
                await api.account()
    assert rogue.requests == [], "the token went to a host the client was not given"
    assert len(standby.requests) == 1, "no takeover is under way: nothing to wait for"
    assert caught.value.detail == (
        f"this coordinator is a standby (it names {rogue_url} as the leader, which is none of "
        "the coordinator URLs given, so it is not followed)"
    )
    assert (caught.value.status, caught.value.error, caught.value.leader) == (
        307,
        "not_leader",
        rogue_url,
    )


async def test_a_leader_outside_the_list_sends_the_call_to_the_next_url_instead() -> None:
    rogue, standby, leader = Coordinator("leader"), Coordinator("standby"), Coordinator("leader")
    async with running(rogue, standby, leader) as (rogue_url, standby_url, leader_url):
        standby.leader_url = rogue_url
        async with CoordinatorApi([standby_url, leader_url], "secret") as api:
            assert (await api.market())["served_by"] == "leader"
    assert rogue.requests == [] and len(leader.requests) == 1


async def test_a_dead_url_is_skipped() -> None:
    leader = Coordinator("leader")
    with closed_port() as dead:
        async with running(leader) as (leader_url,), LogClient([dead, leader_url]) as client:
            assert (await client.json("/v1/log/entries", {"start": 0}))["served_by"] == "leader"
            assert client.url == leader_url
            await client.json("/v1/log/entries", {"start": 1})
    assert len(leader.requests) == 2


@contextmanager
def vanished() -> Iterator[str]:
    """An address that takes no connection and refuses none, as a machine that disappeared:
    its accept queue is full and never served, so the kernel drops every new SYN."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(server.getsockname())
            yield url
        finally:
            for filler in fillers:
                filler.close()


async def test_a_vanished_leader_costs_one_connect_timeout_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_client, "CONNECT_TIMEOUT_S", 0.2)
    standby = Coordinator("standby")
    with vanished() as gone:
        async with running(standby) as (standby_url,):
            standby.leader_url = gone  # not yet told that the leader is gone
            client = _quick(HttpClient([gone, standby_url], timeout_s=30))
            tries: list[str] = []
            send_to = client._send_to

            async def counted(url: str, *args: Any) -> bytes:
                tries.append(url)
                return await send_to(url, *args)

            monkeypatch.setattr(client, "_send_to", counted)
            async with client:
                with pytest.raises(NotLeader) as caught:
                    await client.request("POST", "/v1/jobs")
    assert tries == [gone] + [standby_url] * MAX_ROUNDS
    assert caught.value.detail.endswith(f"(tried {gone}, {standby_url})")


async def test_when_every_url_fails_the_sentence_names_each() -> None:
    with closed_port() as first, closed_port() as second:
        async with HttpClient(f"{first},{second}", timeout_s=5) as client:
            with pytest.raises(NotConnected) as caught:
                await client.request("GET", "/healthz")
    assert caught.value.detail.startswith(f"cannot reach the coordinator at {second} (")
    assert caught.value.detail.endswith(f"(tried {first}, {second})")


async def test_a_request_that_may_have_arrived_is_not_sent_elsewhere() -> None:
    slow, other = Coordinator("slow"), Coordinator("leader")
    async with running(slow, other) as urls, HttpClient(urls, timeout_s=0.3) as client:
        with pytest.raises(Unreachable) as caught:
            await client.request("POST", "/v1/jobs", data=b"{}")
        assert not isinstance(caught.value, NotConnected)
        assert (len(slow.requests), len(other.requests)) == (1, 0)
        assert (await client.request("POST", "/v1/jobs", data=b"{}"))["served_by"] == "leader"
    assert (len(slow.requests), len(other.requests)) == (1, 1)
    assert caught.value.detail == (
        f"the coordinator at {urls[0]} did not answer POST /v1/jobs within 0.3 s"
    )


async def test_a_call_gives_up_after_a_bounded_number_of_rounds() -> None:
    first, second = Coordinator("standby"), Coordinator("standby")
    async with running(first, second) as urls, _quick(HttpClient(urls, timeout_s=5)) as client:
        first.leader_url, second.leader_url = urls[1], urls[0]  # each names the other
        with pytest.raises(NotLeader) as caught:
            await client.request("POST", "/v1/jobs")
    assert (len(first.requests), len(second.requests)) == (MAX_ROUNDS, MAX_ROUNDS)
    assert caught.value.detail.endswith(f"(tried {urls[0]}, {urls[1]})")


async def test_the_agent_signs_afresh_for_the_leader() -> None:
    key = PrivateKey.generate()
    standby, leader = Coordinator("standby", msgpack=True), Coordinator("leader", msgpack=True)
    async with running(standby, leader) as (standby_url, leader_url):
        standby.leader_url = leader_url
        async with CoordinatorClient([standby_url, leader_url], key) as client:
            answer = await client.heartbeat(None, {})
    assert answer == {"served_by": "leader", "path": "/v1/agent/heartbeat"}
    sent = [body for _, _, body in standby.requests + leader.requests]
    nonces = {
        open_request(body, key.public, "POST", "/v1/agent/heartbeat", now_ms(), 60_000).nonce
        for body in sent
    }
    assert len(sent) == 2 and len(nonces) == 2, "the leader got the standby's bytes again"


async def test_the_agent_long_poll_follows_the_leader() -> None:
    standby, leader = Coordinator("standby", msgpack=True), Coordinator("leader", msgpack=True)
    async with running(standby, leader) as (standby_url, leader_url):
        standby.leader_url = leader_url
        async with CoordinatorClient(f"{standby_url},{leader_url}", PrivateKey.generate()) as c:
            assert (await c.leases(-1, 0))["served_by"] == "leader"
            await c.leases(-1, 0)
    assert (len(standby.requests), len(leader.requests)) == (1, 2)


async def test_a_heartbeat_to_a_silent_leader_gives_up_before_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coordinator_client, "HEARTBEAT_TIMEOUT_S", 0.3)
    silent, leader = Coordinator("slow", msgpack=True), Coordinator("leader", msgpack=True)
    async with running(silent, leader) as urls:
        async with CoordinatorClient(urls, PrivateKey.generate(), timeout_s=60) as client:
            with pytest.raises(Unreachable, match="did not answer POST /v1/agent/heartbeat"):
                await client.heartbeat(None, {})
            assert (await client.heartbeat(None, {}))["served_by"] == "leader"
    assert (len(silent.requests), len(leader.requests)) == (1, 1)


# -- what people type ------------------------------------------------------------------------


def test_urls_keep_their_order_and_lose_trailing_slashes() -> None:
    assert parse_coordinator_urls("https://b.example.cn/, https://a.example.cn:8443") == (
        "https://b.example.cn",
        "https://a.example.cn:8443",
    )
    assert parse_coordinator_urls(["http://127.0.0.1:1"]) == ("http://127.0.0.1:1",)


@pytest.mark.parametrize(
    ("urls", "sentence"),
    [
        (
            "https://a.example.cn,http://b.example.cn",
            "refusing to send credentials over plain HTTP to b.example.cn; use https:// "
            "(plain HTTP is allowed only to loopback)",
        ),
        (
            "https://a.example.cn,,https://b.example.cn",
            "the coordinator URL list 'https://a.example.cn,,https://b.example.cn' has an "
            "empty item (number 2 of 3); separate URLs by single commas, as in "
            "https://a.example.cn,https://b.example.cn",
        ),
        (
            "https://a.example.cn,https://A.example.cn:443/",
            "coordinator URL 'https://A.example.cn:443' is given twice "
            "(as 'https://a.example.cn' before)",
        ),
        (["https://a.example.cn", "https://a.example.cn"], "'https://a.example.cn' is given twice"),
        ("https://a.example.cn:port", "has a port that is not a number"),
        (" , ", "no coordinator URL given"),
        ([], "no coordinator URL given"),
    ],
)
def test_bad_url_lists_are_refused_naming_the_item(urls: Any, sentence: str) -> None:
    with pytest.raises(TransportError) as caught:
        parse_coordinator_urls(urls)
    assert sentence in caught.value.detail
    with pytest.raises(TransportError):
        HttpClient(urls, timeout_s=1)


def test_a_named_leader_counts_only_when_it_is_one_of_the_list() -> None:
    urls = ("https://a.example.cn", "https://b.example.cn:8443/suanli")
    assert index_of(urls, "HTTPS://B.example.cn:8443/suanli/") == 1
    assert index_of(urls, "https://a.example.cn:443") == 0
    assert index_of(urls, "http://a.example.cn") is None  # another scheme is another host
    assert index_of(urls, "https://a.example.cn.evil.cn") is None
    assert index_of(urls, "https://b.example.cn:8443") is None  # another path
    assert index_of(urls, "not a url at all") is None
    assert named_leader(urls, None, "https://b.example.cn:8443/suanli/v1/jobs?x=1", "/v1/jobs") == 1
    assert named_leader(urls, None, "https://evil.cn/v1/jobs", "/v1/jobs") is None
    assert named_leader(urls, None, "https://a.example.cn/elsewhere", "/v1/jobs") is None
    assert named_leader(urls, "https://evil.cn", "https://a.example.cn/v1/jobs", "/v1/jobs") is None


def test_the_cli_refuses_a_bad_list_before_sending(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUANLI_TOKEN", "secret")
    monkeypatch.setenv("SUANLI_COORDINATOR", "https://a.example.cn,,https://b.example.cn")
    assert cli.main(["job", "list"]) == cli.EXIT_USAGE
    assert "has an empty item (number 2 of 3)" in capsys.readouterr().err
    monkeypatch.setenv("SUANLI_COORDINATOR", "https://a.example.cn,https://a.example.cn")
    assert cli.main(["audit", "verify"]) == cli.EXIT_USAGE
    assert "suanli: coordinator URL 'https://a.example.cn' is given twice" in (
        capsys.readouterr().err
    )


# -- the commands against a real coordinator behind a standby -------------------------------


async def _suanli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(SUANLI, *args, env=env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert b"Traceback" not in err, err.decode()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.integration
async def test_suanli_and_its_audit_reach_the_leader_through_a_list(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path).start()
    standby = Coordinator("standby")
    try:
        standby.leader_url = coordinator.url
        token = coordinator.add_enterprise(1)
        with closed_port() as dead:
            async with running(standby) as (standby_url,):
                env = {
                    **clean_env(),
                    "SUANLI_COORDINATOR": f"{dead},{standby_url},{coordinator.url}",
                    "SUANLI_TOKEN": token,
                }
                jobs = ["--image", "busybox:latest", "--gpus", "1", "--max-duration", "10m"]
                jobs += ["--max-price-per-gpu-hour", "10"]
                submitted = await _suanli(env, "--json", "job", "submit", *jobs, "--", "true")
                cancelled = await _suanli(
                    env, "--json", "job", "cancel", json.loads(submitted[1])["id"]
                )
                del env["SUANLI_TOKEN"]  # the log is public
                audited = await _suanli(env, "audit", "verify", "--json")
    finally:
        coordinator.stop()
    assert submitted[0] == 0 and cancelled[0] == 0, submitted[2] + cancelled[2]
    assert json.loads(cancelled[1])["state"] == "cancelled"
    assert audited[0] == 0, audited[2]
    assert json.loads(audited[1])["coordinator"] == coordinator.url
    # each process asks the standby once, then keeps to the leader it named
    paths = [path for path, _, _ in standby.requests]
    assert len(paths) == 3 and paths[0] == "/v1/jobs" and paths[1].endswith("/cancel")
    assert [auth for _, auth, _ in standby.requests] == [f"Bearer {token}"] * 2 + [None]
