"""Bad input against a running coordinator: never a 5xx, always the one error shape, nothing
written.

Hypothesis drives every operation of the coordinator's own OpenAPI document with generated
paths, queries, headers and bodies, with and without valid credentials (bearer tokens for
people, real Ed25519 signatures for agents); explicit cases below name the classic traps.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from coordinator_harness import FAST_SETTINGS, CoordinatorProcess, inventory
from databases import engine_params, new_database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.http.openapi import openapi_document
from coordinator.http.routes import DECLARATIONS
from shared import canonical
from shared.envelope import seal
from shared.identity import PrivateKey
from shared.signed_request import sign_request

AGENT_PREFIX = "/v1/agent/"
MSGPACK = "application/msgpack"
ASK = 1_000_000_000
BODY_LIMIT = 1 << 20
EXAMPLES = 120  # per operation


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Response:
    status: int
    content_type: str
    raw: bytes

    def body(self) -> Any:
        if self.content_type == MSGPACK:
            return msgpack.unpackb(self.raw, raw=False)
        return json.loads(self.raw)


@dataclass
class World:
    coordinator: CoordinatorProcess
    enterprise: str
    other_enterprise: str
    auditor: str
    agent: PrivateKey
    job_id: str
    lease_id: str
    pending_job_id: str
    document: dict[str, Any] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.coordinator.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            return Response(
                response.status, response.getheader("Content-Type", "").split(";")[0], raw
            )
        finally:
            connection.close()

    def json(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        return self.request(method, path, data, all_headers)

    def signed(
        self, path: str, body: Any, at_ms: int | None = None, key: PrivateKey | None = None
    ) -> Response:
        envelope = sign_request(
            key or self.agent, "POST", path, body, _now() if at_ms is None else at_ms
        )
        return self.request("POST", path, envelope, {"Content-Type": MSGPACK})

    def counts(self) -> dict[str, int]:
        tables = ("jobs", "receipts", "ledger_postings", "agents", "leases")
        # one query, so one connection a count (a PostgreSQL connection costs a server process)
        counts = ", ".join(f"(SELECT COUNT(*) FROM {table})" for table in tables)
        [row] = self.coordinator.rows(f"SELECT {counts}")  # noqa: S608
        return dict(zip(tables, row, strict=True))

    def jobs(self) -> dict[str, tuple[Any, ...]]:
        response = self.json("GET", "/v1/jobs?limit=1000", token=self.auditor)
        assert response.status == 200
        return {
            job["id"]: (
                job["state"],
                job["reason"],
                job["charged_micro_yuan"],
                job["lease_id"],
                job["cancel_requested"],
            )
            for job in response.body()["jobs"]
        }

    def job_metrics(self) -> dict[str, float]:
        text = self.request("GET", "/metrics").raw.decode()
        return {
            m[1]: float(m[2])
            for m in re.finditer(r'^suanli_jobs\{state="(\w+)"\} (\S+)$', text, re.M)
        }


def check_error_shape(
    world: World, method: str, path: str, response: Response, what: Any = None
) -> None:
    """No 5xx; a 4xx carries {"error", "detail"} in the route's own encoding."""
    context = f"{method} {path} -> {response.status}: {response.raw[:300]!r}\nrequest: {what!r}"
    assert response.status < 500, (
        f"{context}\n--- coordinator log ---\n{world.coordinator.log()[-4000:]}"
    )
    if response.status < 400:
        return
    route_path = urllib.parse.unquote(path.split("?")[0])
    expected = MSGPACK if route_path.startswith(AGENT_PREFIX) else "application/json"
    assert response.content_type == expected, context
    body = response.body()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, context
    assert isinstance(body["error"], str) and re.fullmatch(r"[a-z_]+", body["error"]), context
    assert isinstance(body["detail"], str) and body["detail"].strip(), context


def _admin_token(coordinator: CoordinatorProcess, *args: str, key: str = "token") -> str:
    return str(coordinator.admin_json(*args)[key])


@pytest.fixture(scope="module", params=engine_params())
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    workdir: Path = tmp_path_factory.mktemp("bad-input")
    # agents stay online for the whole module without heartbeating, and nothing they leave
    # half-done (a cancel) is finished behind the fuzzer's back; lease polls never linger
    coordinator = CoordinatorProcess(
        workdir,
        database=new_database(request.param, workdir),
        settings={
            **FAST_SETTINGS,
            "heartbeat_timeout_ms": 600_000,
            "start_deadline_ms": 600_000,
            "stop_grace_ms": 600_000,  # a job a fuzzed cancel reached stays cancelling
            "long_poll_max_ms": 20,
            "quote_request_burst": 10_000,  # quotes are fuzzed, not their rate limit
        },
    )
    coordinator.start()
    try:
        enterprise = coordinator.add_enterprise(31)
        other = coordinator.add_enterprise(32)
        auditor = _admin_token(coordinator, "add-auditor", "--name", "Fuzz auditor")
        key = PrivateKey.generate()
        probe = World(coordinator, enterprise, other, auditor, key, "", "", "")
        path = "/v1/agent/enroll"
        request = sign_request(
            key,
            "POST",
            path,
            {"token": coordinator.add_provider(33), "hostname": "fuzz-host"},
            _now(),
        )
        enrolled = probe.request(
            "POST",
            path,
            canonical.encode({"public_key": key.public.raw, "request": request}),
            {"Content-Type": MSGPACK},
        )
        assert enrolled.status == 201, enrolled.raw
        beat = probe.signed(
            "/v1/agent/heartbeat", {"ask_per_gpu_hour": ASK, "inventory": inventory(["GPU-fuzz0"])}
        )
        assert beat.status == 200, beat.raw
        job = probe.json(
            "POST",
            "/v1/jobs",
            {
                "image": "busybox:latest",
                "gpus": 1,
                "max_duration_s": 3600,
                "max_price_per_gpu_hour_micro_yuan": ASK,
            },
            token=enterprise,
        )
        assert job.status == 201, job.raw
        lease_id = ""
        deadline = time.monotonic() + 10
        while not lease_id:
            assert time.monotonic() < deadline, "no lease arrived"
            leases = probe.signed("/v1/agent/leases", {"known_version": -1, "wait_ms": 0}).body()[
                "leases"
            ]
            lease_id = leases[0]["lease_id"] if leases else ""
            time.sleep(0.05)
        assert (
            probe.signed("/v1/agent/status", {"lease_id": lease_id, "event": "started"}).status
            == 200
        )
        # a job no agent can take stays pending: its state must not move either
        pending = probe.json(
            "POST",
            "/v1/jobs",
            {
                "image": "busybox:latest",
                "gpus": 64,
                "max_duration_s": 60,
                "max_price_per_gpu_hour_micro_yuan": 1,
            },
            token=enterprise,
        )
        assert pending.status == 201, pending.raw
        world = World(
            coordinator,
            enterprise,
            other,
            auditor,
            key,
            job.body()["id"],
            lease_id,
            pending.body()["id"],
        )
        world.document = world.request("GET", "/v1/openapi.json").body()
        yield world
    finally:
        coordinator.stop()


# -- generated requests from the OpenAPI document ------------------------------------------

SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\u200f",
    "\u202eevil",
    "\ufeff",
    "\U0001f600",
    "² ",
    "²",
    "١٢",
    "0x10",
    "1e3",
    "-0",
    "+1",
    "NaN",
    "null",
    "../..",
    "%00",
    "a" * 300,
    "\n",
    "\r\n",
    "GPU-fuzz0",
]
HUGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -1, 0, 10**400]
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, -0.0, 1e308, 0.5]),
    st.text(max_size=20),
    st.sampled_from(SPECIAL_TEXT),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
PACK_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([2**63 - 1, 2**64 - 1, -(2**63), -1, 0]),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.sampled_from([s for s in SPECIAL_TEXT if "\ud800" not in s and "\udfff" not in s]),
)
PACK_VALUES = st.recursive(
    PACK_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID_JOB = {
    "image": "busybox:latest",
    "gpus": 1,
    "max_duration_s": 60,
    "max_price_per_gpu_hour_micro_yuan": 1_000,
    "command": ["true"],
    "env": {"A": "b"},
}
JOB_KEYS = [
    *VALID_JOB,
    "min_gpu_memory_bytes",
    "gpu_models",
    "cpus_milli",
    "memory_bytes",
    "idempotency_key",
    "unknown_field",
]


@st.composite
def job_bodies(draw: st.DrawFn) -> Any:
    """A job that is valid but for a few fields replaced by odd values (sometimes none)."""
    body = dict(VALID_JOB)
    for name in draw(st.lists(st.sampled_from(JOB_KEYS), max_size=3, unique=True)):
        if draw(st.booleans()) and name in body:
            del body[name]
        else:
            body[name] = draw(JSON_VALUES)
    return body


@st.composite
def agent_payloads(draw: st.DrawFn, path: str, world: World) -> Any:
    """A body for a signed agent request: the right shape with odd values, or anything."""
    odd = PACK_VALUES
    lease_id = st.one_of(st.just(world.lease_id), st.text(max_size=30))
    shapes = {
        "/v1/agent/heartbeat": st.fixed_dictionaries(
            {},
            optional={
                "ask_per_gpu_hour": st.one_of(st.just(ASK), odd),
                "inventory": st.one_of(
                    st.just(inventory(["GPU-fuzz0"])),
                    odd,
                    st.fixed_dictionaries(
                        {
                            "gpus": st.lists(
                                st.dictionaries(
                                    st.sampled_from(
                                        [
                                            "index",
                                            "uuid",
                                            "name",
                                            "memory_total_bytes",
                                            "memory_used_bytes",
                                            "healthy",
                                            "utilization_gpu_pct",
                                            "power_mw",
                                            "power_limit_mw",
                                            "energy_mj",
                                        ]
                                    ),
                                    odd,
                                ),
                                max_size=3,
                            ),
                            "host": st.one_of(
                                odd, st.just({"cpu_count": 1, "memory_total_bytes": 1})
                            ),
                        }
                    ),
                ),
            },
        ),
        "/v1/agent/leases": st.fixed_dictionaries(
            {}, optional={"known_version": odd, "wait_ms": st.one_of(odd, st.integers(0, 20))}
        ),
        # no exit/failed reports: those would end the module's lease (they are writes that succeed)
        "/v1/agent/status": st.fixed_dictionaries(
            {},
            optional={
                "lease_id": lease_id,
                "event": st.one_of(st.sampled_from(["started", "bogus"]), odd),
                "exit_code": odd,
                "reason": odd,
                "reason_code": odd,
            },
        ),
        "/v1/agent/logs": st.fixed_dictionaries(
            {},
            optional={"lease_id": st.one_of(st.text(max_size=30), odd), "offset": odd, "data": odd},
        ),
        "/v1/agent/receipts": st.fixed_dictionaries(
            {},
            optional={
                "receipts": st.one_of(
                    odd,
                    st.lists(
                        st.one_of(
                            st.binary(max_size=200), odd.map(lambda v: _sealed_receipt(world, v))
                        ),
                        max_size=3,
                    ),
                )
            },
        ),
        "/v1/agent/enroll": st.fixed_dictionaries({}, optional={"token": odd, "hostname": odd}),
    }
    return draw(st.one_of(odd, shapes.get(path, odd)))


def _sealed_receipt(world: World, payload: Any) -> bytes:
    try:
        return seal("receipt", payload, world.agent)
    except Exception:  # noqa: BLE001 - too large for a receipt: send garbage instead
        return b"\x93"


def _rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws (hypothesis favours the first choice, so it is False)."""
    return bool(draw(st.sampled_from([False] * (one_in - 1) + [True])))


@st.composite
def agent_bodies(draw: st.DrawFn, path: str, world: World) -> bytes | None:
    kind = draw(
        st.sampled_from(
            ["signed"] * 8 + ["bytes", "msgpack", "none", "other_path", "stranger", "truncated"]
        )
    )
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "msgpack":
        return msgpack.packb(draw(PACK_VALUES), use_bin_type=True)
    if kind == "none":
        return None
    body = draw(agent_payloads(path, world))
    when = _now() + draw(st.sampled_from([0] * 8 + [-3_600_000, 3_600_000, -61_000, 61_000]))
    if _rarely(draw, 20):
        when = draw(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]))
    key = PrivateKey.generate() if kind == "stranger" else world.agent
    signed_path = (
        "/v1/agent/heartbeat" if kind == "other_path" and path != "/v1/agent/heartbeat" else path
    )
    if path == "/v1/agent/enroll":
        request = sign_request(key, "POST", signed_path, body, when)
        outer = draw(
            st.one_of(
                st.just({"public_key": key.public.raw, "request": request}),
                st.just({"public_key": world.agent.public.raw, "request": request}),
                st.fixed_dictionaries(
                    {}, optional={"public_key": PACK_VALUES, "request": PACK_VALUES}
                ),
            )
        )
        return canonical.encode(outer)
    envelope = sign_request(key, "POST", signed_path, body, when)
    if kind == "truncated":
        return envelope[: draw(st.integers(0, len(envelope) - 1))]
    return envelope


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]


OPERATIONS = _operations(openapi_document(DECLARATIONS))


@st.composite
def generated_requests(
    draw: st.DrawFn,
    world: World,
    operation: tuple[str, str, dict[str, Any]],
) -> tuple[str, str, bytes | None, dict[str, str]]:
    method, template, spec = operation
    if _rarely(draw, 10):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    if _rarely(draw, 20):
        template = draw(st.sampled_from(["/v1/", "/v1/agent/", "/v1/jobs/"])) + "{junk}"
    path = template
    for name in re.findall(r"\{(\w+)\}", template):
        value = draw(
            st.one_of(
                st.sampled_from([world.job_id, world.pending_job_id]),
                st.text(min_size=1, max_size=30),
                st.sampled_from(SPECIAL_TEXT[1:]),
            )
        )
        path = path.replace(
            "{" + name + "}", urllib.parse.quote(value, safe="", errors="surrogatepass")
        )
    query: list[tuple[str, str]] = []
    for parameter in spec.get("parameters", []):
        if parameter["in"] == "query" and not _rarely(draw, 4):
            query.append(
                (
                    parameter["name"],
                    draw(
                        st.one_of(
                            st.sampled_from(["1", "0", "2", "1000", "1001", "pending", "running"]),
                            st.integers(-(2**70), 2**70).map(str),
                            st.text(max_size=12),
                            st.sampled_from(SPECIAL_TEXT),
                        )
                    ),
                )
            )
    if _rarely(draw, 5):
        query.append((draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=8))))
    if query:
        path += "?" + urllib.parse.urlencode(query, errors="surrogatepass")

    headers: dict[str, str] = {}
    token = draw(
        st.sampled_from(
            [world.enterprise] * 3
            + [world.auditor] * 2
            + [world.other_enterprise, None, "not-a-token", "", "Basic dXNlcjpwYXNz"]
        )
    )
    if token is not None:
        headers["Authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
    header_text = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    )
    if _rarely(draw, 4):
        headers["Idempotency-Key"] = draw(
            st.one_of(header_text, st.sampled_from(["", " ", "a" * 200]))
        )
    if template.startswith(AGENT_PREFIX):
        body = draw(agent_bodies(template, world))
        content_type = draw(
            st.sampled_from([MSGPACK] * 8 + ["application/json", "text/plain", None])
        )
    else:
        raw_json = st.sampled_from(
            [
                b"{",
                b'{"image": "\xff\xfe"}',
                b"[]" * 10_000,
                b'{"gpus": 1e999}',
                b"\xef\xbb\xbf{}",
                b'{"gpus": ' + b"9" * 5000 + b"}",
            ]
        )
        body = draw(
            st.one_of(
                job_bodies().map(lambda b: json.dumps(b).encode()),
                job_bodies().map(lambda b: json.dumps(b).encode()),
                st.none(),
                JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=200),
                raw_json,
            )
        )
        content_type = draw(
            st.sampled_from(["application/json"] * 8 + [MSGPACK, "text/plain", None])
        )
    if content_type is not None and body is not None:
        headers["Content-Type"] = content_type
    return method, path, body, headers


def test_the_served_document_is_the_one_fuzzed(world: World) -> None:
    assert _operations(world.document) == OPERATIONS


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_generated_requests_never_fail_the_server_and_refusals_write_nothing(
    world: World, operation: tuple[str, str, dict[str, Any]]
) -> None:
    jobs_before = world.jobs()
    metrics_before = world.job_metrics()
    touched: set[str] = set()
    created = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(generated_requests(world, operation))
    def one(request: tuple[str, str, bytes | None, dict[str, str]]) -> None:
        nonlocal created
        method, path, body, headers = request
        before = world.counts()
        response = world.request(method, path, body, headers)
        check_error_shape(world, method, path, response, request)
        after = world.counts()
        if response.status >= 400:
            changed = {
                k: (before[k], after[k])
                for k in ("jobs", "receipts", "ledger_postings", "agents")
                if before[k] != after[k]
            }
            assert not changed, f"a refused {method} {path} wrote {changed}: {request!r}"
            return
        if method != "POST":
            return
        if path.split("?")[0] == "/v1/jobs/quote":  # an answered quote writes nothing either
            assert before == after, f"a quote wrote {before} -> {after}: {request!r}"
            return
        if path.startswith("/v1/jobs"):
            job = response.body()
            touched.add(job["id"])
            created += response.status == 201 and path.split("?")[0] == "/v1/jobs"
        elif path.startswith(AGENT_PREFIX):
            # an accepted agent write (a heartbeat without its GPU, say) may move the module's lease
            touched.add(world.job_id)
            if path.startswith(AGENT_PREFIX + "receipts"):
                results = msgpack.unpackb(response.raw, raw=False)["results"]
                accepted = sum(r["status"] == "accepted" for r in results)
                assert after["receipts"] - before["receipts"] == accepted

    one()
    jobs_after = world.jobs()
    assert len(jobs_after) == len(jobs_before) + created
    untouched = {job_id: view for job_id, view in jobs_after.items() if job_id not in touched}
    assert untouched == {
        job_id: view for job_id, view in jobs_before.items() if job_id not in touched
    }
    metrics_after = world.job_metrics()
    assert sum(metrics_after.values()) == sum(metrics_before.values()) + created
    assert world.counts()["jobs"] == len(jobs_after)


# -- explicit cases ------------------------------------------------------------------------


def _refused(
    world: World,
    response: Response,
    method: str,
    path: str,
    status: int,
    error: str | None = None,
    mentions: str | None = None,
) -> dict[str, Any]:
    check_error_shape(world, method, path, response)
    body = response.body()
    assert response.status == status, body
    if error is not None:
        assert body["error"] == error, body
    if mentions is not None:
        assert mentions.lower() in body["detail"].lower(), body
    return dict(body)


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    before, jobs = world.counts(), world.jobs()
    yield
    assert world.counts() == before
    assert world.jobs() == jobs


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "body", [b"\xc1", b"\x93", b"\x93\xc4", b"\xdc\xff\xff", b"\x81\xa1a", b"", b"\xff" * 64]
)
@pytest.mark.parametrize("path", ["/v1/agent/heartbeat", "/v1/agent/receipts", "/v1/agent/enroll"])
def test_malformed_msgpack_is_refused(world: World, path: str, body: bytes) -> None:
    response = world.request("POST", path, body, {"Content-Type": MSGPACK})
    detail = _refused(world, response, "POST", path, 422 if path.endswith("enroll") else 401)[
        "detail"
    ]
    assert "envelope" in detail or "msgpack" in detail or "enrol" in detail, detail


def _raw_envelope(key: PrivateKey, payload_bytes: bytes) -> bytes:
    """A correctly signed request envelope around payload bytes that are not canonical msgpack."""
    signature = key.sign(b"suanli/request/v1\n" + payload_bytes)
    return msgpack.packb([payload_bytes, key.public.key_id, signature], use_bin_type=True)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        b"\x95\xa4POST",
        b"\x81\x01\x02",
        b"\xcb" + bytes(8),
        msgpack.packb({"b": 1, "a": 2}),
    ],
)
def test_a_signed_envelope_around_bad_msgpack_is_refused(world: World, payload: bytes) -> None:
    path = "/v1/agent/heartbeat"
    response = world.request(
        "POST", path, _raw_envelope(world.agent, payload), {"Content-Type": MSGPACK}
    )
    _refused(world, response, "POST", path, 401, "unauthenticated", mentions="payload")


@pytest.mark.usefixtures("unchanged")
def test_truncated_envelopes_are_refused(world: World) -> None:
    path = "/v1/agent/heartbeat"
    envelope = sign_request(
        world.agent,
        "POST",
        path,
        {"ask_per_gpu_hour": ASK, "inventory": inventory(["GPU-fuzz0"])},
        _now(),
    )
    for cut in sorted({0, 1, 2, 3, 10, len(envelope) // 2, len(envelope) - 65, len(envelope) - 1}):
        response = world.request("POST", path, envelope[:cut], {"Content-Type": MSGPACK})
        _refused(world, response, "POST", path, 401, "unauthenticated")
    # a receipt truncated inside a well-signed batch is rejected by rule, and stores nothing
    answer = world.signed(
        "/v1/agent/receipts", {"receipts": [seal("receipt", [1], world.agent)[:-5]]}
    )
    assert answer.status == 200, answer.raw
    [result] = answer.body()["results"]
    assert result["status"] == "rejected" and result["rule"] in ("malformed", "signature"), result
    assert "truncated" in result["detail"], result


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/jobs", "application/json"),
        ("/v1/agent/receipts", MSGPACK),
        ("/v1/agent/enroll", MSGPACK),
    ],
)
def test_oversized_bodies_are_refused_with_413(world: World, path: str, content_type: str) -> None:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {world.enterprise}"}
    response = world.request("POST", path, b"[" + b"1," * BODY_LIMIT + b"1]", headers)
    _refused(world, response, "POST", path, 413, "too_large", mentions=str(BODY_LIMIT))


def _job(world: World, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return world.request(
        "POST",
        "/v1/jobs",
        body,
        {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {world.enterprise}",
            **(headers or {}),
        },
    )


def _job_json(**changes: Any) -> bytes:
    return json.dumps({**VALID_JOB, **changes}).encode()


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (_job_json(image="busy\ud800box"), "image"),
        pytest.param(
            b'{"image": "busybox", "gpus": 1, "max_duration_s": 60,'
            b' "max_price_per_gpu_hour_micro_yuan": 1,'
            b' "command": ["\\ud800"]}',
            "command",
        ),
        pytest.param(_job_json(command=["echo", "\udfff"]), "command"),
        pytest.param(_job_json(env={"A": "\ud800"}), "env"),
        (_job_json(env={"\u200fA": "x"}), "env"),
        pytest.param(_job_json(gpu_models=["H100\ud800"]), "gpu_models"),
        (_job_json(image="busybox\u200f"), "image"),
        (_job_json(image="\u202ebusybox"), "image"),
        (_job_json(image="busybox\x00"), "image"),
        (_job_json(command=["a\x00b"]), "command"),
        (_job_json(env={"A": "a\x00"}), "env"),
        (_job_json(idempotency_key="\ud800"), "idempotency_key"),
        (_job_json(idempotency_key="key\u200f"), "idempotency_key"),
        (_job_json(idempotency_key="key\x00"), "idempotency_key"),
        (_job_json(idempotency_key=""), "idempotency_key"),
        (_job_json(idempotency_key="k" * 129), "idempotency_key"),
        (_job_json(idempotency_key=7), "idempotency_key"),
    ],
)
def test_unicode_edge_cases_in_job_fields_are_refused(
    world: World, body: bytes, field_name: str
) -> None:
    before = world.counts()
    _refused(world, _job(world, body), "POST", "/v1/jobs", 422, "invalid_job", mentions=field_name)
    assert world.counts() == before


async def test_a_job_with_a_lone_surrogate_cannot_poison_an_agents_lease_polls(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    from coordinator_harness import Api, FakeAgent

    agent = FakeAgent(coordinator.url, ["GPU-s0"], 1_000)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(41))
    await agent.heartbeat()
    api = Api(coordinator.url, coordinator.add_enterprise(42))
    cleanup.append(api)
    status, _ = await api.call(
        "POST",
        "/v1/jobs",
        data=_job_json(env={"A": "\ud800"}),
        headers={"Content-Type": "application/json"},
    )
    await asyncio.sleep(0.5)  # a job that got in is auctioned to the only agent
    await agent.leases(wait_ms=0)  # must not raise CoordinatorError(500)
    assert status == 422


@pytest.mark.usefixtures("unchanged")
def test_a_nul_in_a_header_is_refused_by_the_http_parser(world: World) -> None:
    # aiohttp's parser answers 400 text/plain before the application sees the request, so this
    # one refusal cannot carry the JSON error shape; it must still be a 4xx that writes nothing
    response = _job(world, _job_json(), {"Idempotency-Key": "key\x00"})
    assert response.status == 400, response.raw


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "name",
    [
        "gpus",
        "max_duration_s",
        "max_price_per_gpu_hour_micro_yuan",
        "min_gpu_memory_bytes",
        "cpus_milli",
        "memory_bytes",
    ],
)
@pytest.mark.parametrize(
    "literal",
    [
        b"18446744073709551616",
        b"-9223372036854775809",
        b"1000000000000000000000000000000",
        b"-1",
        b"-1000000",
        b"1.0",
        b"1e3",
        b"0.5",
        b"NaN",
        b"Infinity",
        b"true",
        b'"1"',
        b"null",
        b"9" * 5000,
    ],
)
def test_out_of_range_and_non_integer_numbers_are_refused(
    world: World, name: str, literal: bytes
) -> None:
    body = _job_json(**{name: 0}).replace(f'"{name}": 0'.encode(), f'"{name}": '.encode() + literal)
    if literal == b"null" and name not in (
        "gpus",
        "max_duration_s",
        "max_price_per_gpu_hour_micro_yuan",
    ):
        pytest.skip("null means the default for an optional field")
    response = _job(world, body)
    check_error_shape(world, "POST", "/v1/jobs", response)
    assert response.status == 422, response.body()
    detail = response.body()["detail"]
    assert name in detail or "JSON" in detail, detail


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",
        "offset=%C2%B2",
        "limit=%D9%A1",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=1.5",
        "limit=18446744073709551616",
        "limit=",
        "state=%00",
        "state=Pending",
        "state=pending%E2%80%8F",
    ],
)
def test_odd_query_parameters_are_refused_or_read_exactly(world: World, query: str) -> None:
    path = f"/v1/jobs?{query}"
    response = world.json("GET", path, token=world.auditor)
    check_error_shape(world, "GET", path, response)
    if response.status != 200:
        assert response.status == 422
        assert query.split("=")[0] in response.body()["detail"]
    logs = f"/v1/jobs/{world.job_id}/logs?{query.replace('limit', 'offset')}"
    check_error_shape(world, "GET", logs, world.json("GET", logs, token=world.enterprise))


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("offset_ms", "mentions"),
    [(-3_600_000, "window"), (3_600_000, "window"), (-61_000, "window"), (61_000, "window")],
)
def test_signed_requests_outside_the_time_window_are_refused(
    world: World, offset_ms: int, mentions: str
) -> None:
    for path, body in [
        ("/v1/agent/heartbeat", {"ask_per_gpu_hour": ASK, "inventory": inventory(["GPU-fuzz0"])}),
        ("/v1/agent/receipts", {"receipts": [b"x"]}),
        ("/v1/agent/leases", {"known_version": -1, "wait_ms": 0}),
    ]:
        response = world.signed(path, body, at_ms=_now() + offset_ms)
        _refused(world, response, "POST", path, 401, "unauthenticated", mentions=mentions)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("at_ms", [0, -1, -(2**63), 2**63 - 1, 2**64 - 1])
def test_absurd_signed_times_are_refused(world: World, at_ms: int) -> None:
    response = world.signed("/v1/agent/heartbeat", {}, at_ms=at_ms)
    _refused(
        world, response, "POST", "/v1/agent/heartbeat", 401, "unauthenticated", mentions="window"
    )


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "body", "mentions"),
    [
        (
            "/v1/agent/heartbeat",
            {"ask_per_gpu_hour": -1, "inventory": inventory(["GPU-fuzz0"])},
            "ask_per_gpu_hour",
        ),
        (
            "/v1/agent/heartbeat",
            {"ask_per_gpu_hour": 2**64 - 1, "inventory": inventory(["GPU-fuzz0"])},
            "ask_per_gpu_hour",
        ),
        (
            "/v1/agent/heartbeat",
            {
                "ask_per_gpu_hour": ASK,
                "inventory": {
                    **inventory(["GPU-fuzz0"]),
                    "gpus": [{**inventory(["GPU-fuzz0"])["gpus"][0], "memory_total_bytes": -1}],
                },
            },
            "memory_total_bytes",
        ),
        ("/v1/agent/leases", {"known_version": -1, "wait_ms": -5}, "wait_ms"),
        ("/v1/agent/status", {"lease_id": "lease-nope", "event": "started"}, "lease"),
        ("/v1/agent/logs", {"lease_id": "lease-nope", "offset": 0, "data": b"x"}, "lease"),
        ("/v1/agent/receipts", {"receipts": []}, "receipts"),
        ("/v1/agent/receipts", {"receipts": [b"x"] * 501}, "receipts"),
    ],
)
def test_signed_requests_with_bad_fields_are_refused_by_name(
    world: World, path: str, body: Any, mentions: str
) -> None:
    response = world.signed(path, body)
    check_error_shape(world, "POST", path, response)
    assert 400 <= response.status < 500
    assert mentions in response.body()["detail"], response.body()


@pytest.mark.usefixtures("unchanged")
def test_a_status_report_with_odd_numbers_is_refused(world: World) -> None:
    for exit_code in [2**31, -(2**31) - 1, 2**64 - 1, "0", None]:
        response = world.signed(
            "/v1/agent/status",
            {"lease_id": world.lease_id, "event": "exited", "exit_code": exit_code},
        )
        _refused(world, response, "POST", "/v1/agent/status", 422, mentions="exit_code")
    response = world.signed(
        "/v1/agent/logs", {"lease_id": world.lease_id, "offset": -1, "data": b"x"}
    )
    _refused(world, response, "POST", "/v1/agent/logs", 422, mentions="offset")


@pytest.mark.usefixtures("unchanged")
def test_a_replayed_signed_request_is_refused(world: World) -> None:
    path = "/v1/agent/leases"
    envelope = sign_request(world.agent, "POST", path, {"known_version": -1, "wait_ms": 0}, _now())
    assert world.request("POST", path, envelope, {"Content-Type": MSGPACK}).status == 200
    again = world.request("POST", path, envelope, {"Content-Type": MSGPACK})
    _refused(world, again, "POST", path, 401, "unauthenticated", mentions="nonce")
