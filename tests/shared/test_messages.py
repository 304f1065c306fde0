"""The declared messages: what today's agent and `suanli` client send is accepted, what breaks
a declared rule is refused with a sentence naming the field, and signed bytes stay as sent."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from agent.coordinator_client import CoordinatorClient
from agent.inventory import heartbeat_inventory
from agent.nvml import GpuSample
from coordinator.client import cli as client_cli
from coordinator.client import submit as client_submit
from shared import canonical
from shared.identity import PrivateKey
from shared.messages import (
    MessageError,
    api,
    convert,
    decode_json,
    decode_msgpack,
    decode_query,
)
from shared.messages import agent_protocol as ap
from shared.messages import log as log_messages
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, seal_receipt
from shared.signed_request import open_request

GIB = 1 << 30


def _sample(index: int, **changes: Any) -> GpuSample:
    fields: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{index:04d}-aaaa-bbbb-cccc",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 80 * GIB,
        "memory_used_bytes": 1 * GIB,
        "compute_capability": (9, 0),
        "power_limit_mw": 700_000,
        "utilization_gpu_pct": 40,
        "temperature_c": 55,
        "power_mw": 300_000,
        "energy_mj": 123_456_789,
        "ecc_uncorrected": 0,
        "retired_pages_pending": False,
        "healthy": True,
        "health_reason": None,
    }
    return GpuSample(**{**fields, **changes})


def _daemon_inventory(samples: list[GpuSample]) -> dict[str, Any]:
    """The inventory exactly as the agent's daemon builds it for a heartbeat."""
    return heartbeat_inventory(samples, "/", "550.54.15")


class Recorder(CoordinatorClient):
    """The agent's real client, with the network replaced by a list of what it would send."""

    def __init__(self, key: PrivateKey) -> None:
        super().__init__("http://127.0.0.1:1", key)
        self.sent: list[tuple[str, bytes]] = []

    async def _post(
        self, path: str, body: bytes | Callable[[], bytes], timeout_s: float | None = None
    ) -> Any:
        self.sent.append((path, body() if callable(body) else body))
        return {}

    def opened(self, key: PrivateKey | None = None) -> Any:
        path, envelope = self.sent[-1]
        now = time.time_ns() // 1_000_000
        return open_request(envelope, (key or self.key).public, "POST", path, now, 60_000).body


def _receipt(key: PrivateKey, seq: int = 1) -> bytes:
    gpu_ms = 60_000 * seq
    receipt = Receipt(
        lease_id="lease-1",
        job_id="job-1",
        agent_id=key.public.agent_id,
        seq=seq,
        prev=GENESIS_PREV,
        issued_at_ms=1_790_000_000_000,
        gpu_uuids=("GPU-0",),
        gpu_ms=gpu_ms,
        energy_mj=gpu_ms * 300,
        utilization_pct=90,
        peak_memory_bytes=GIB,
        price_per_gpu_hour=1_000_000,
        amount=usage_amount(gpu_ms, 1_000_000),
        final=False,
        exit_code=None,
    )
    return seal_receipt(receipt, key).envelope


# -- what today's agent sends is accepted ---------------------------------------------------


async def test_the_agents_real_requests_decode() -> None:
    key = PrivateKey.generate()
    client = Recorder(key)
    inventory = _daemon_inventory([_sample(1), _sample(0, healthy=False, health_reason="Xid 79")])

    await client.heartbeat(15_000_000, inventory)
    beat = convert(ap.Heartbeat, client.opened())
    assert beat.ask_per_gpu_hour == 15_000_000
    assert [g.index for g in beat.inventory.gpus] == [0, 1]
    assert beat.inventory.gpus[0].health_reason == "Xid 79"
    await client.heartbeat(None, _daemon_inventory([]))
    assert convert(ap.Heartbeat, client.opened()).ask_per_gpu_hour is None

    await client.leases(known_version=-1, wait_ms=25_000)
    assert convert(ap.LeasePoll, client.opened()) == ap.LeasePoll(known_version=-1, wait_ms=25_000)

    await client.status("lease-1", "started")
    await client.status("lease-1", "exited", exit_code=137, reason="the lease ended")
    assert convert(ap.StatusReport, client.opened()).exit_code == 137
    # what the runner stores as a lease's failure, sent as the daemon sends it
    await client.status("lease-1", "failed", **{"reason_code": "image_pull_failed", "reason": "x"})
    assert convert(ap.StatusReport, client.opened()).reason_code == "image_pull_failed"

    await client.log_chunk("lease-1", 4096, b"\x00\xffbytes, not text")
    assert convert(ap.LogChunk, client.opened()).data == b"\x00\xffbytes, not text"

    receipts = [_receipt(key, 1), _receipt(key, 2)]
    await client.signed("/v1/agent/receipts", {"receipts": receipts})
    assert convert(ap.ReceiptBatch, client.opened()).receipts == receipts


async def test_bodies_built_from_the_types_sign_to_todays_bytes() -> None:
    """A body encoded from its declared type is the body the agent signs today, byte for byte
    (canonical encoding sorts the keys; unset optional fields are left out as today)."""
    key = PrivateKey.generate()
    client = Recorder(key)
    batch = ap.ReceiptBatch(receipts=[_receipt(key)])
    built: list[msgspec.Struct] = [
        ap.LeasePoll(known_version=3, wait_ms=0),
        ap.StatusReport(lease_id="lease-1", event="started"),
        ap.StatusReport(lease_id="lease-1", event="exited", exit_code=0, reason="lease ended"),
        ap.StatusReport(lease_id="lease-1", event="failed", reason_code="x", reason="y"),
        ap.LogChunk(lease_id="lease-1", offset=0, data=b"out"),
        batch,
    ]
    await client.leases(3, 0)
    await client.status("lease-1", "started")
    await client.status("lease-1", "exited", exit_code=0, reason="lease ended")
    await client.status("lease-1", "failed", reason_code="x", reason="y")
    await client.log_chunk("lease-1", 0, b"out")
    await client.signed("/v1/agent/receipts", {"receipts": batch.receipts})
    now = time.time_ns() // 1_000_000
    for message, (path, envelope) in zip(built, client.sent, strict=True):
        sent = open_request(envelope, key.public, "POST", path, now, 60_000).body
        assert canonical.encode(msgspec.to_builtins(message, builtin_types=(bytes,))) == (
            canonical.encode(sent)
        ), path


async def test_enrolment_and_rotation_decode_outside_and_inside() -> None:
    key, new_key = PrivateKey.generate(), PrivateKey.generate()
    client = Recorder(key)
    await client.enrol("enrol_token", "gpu-host-1")
    path, body = client.sent[-1]
    outer = decode_msgpack(ap.EnrolRequest, body)
    assert outer.public_key == key.public.raw
    now = time.time_ns() // 1_000_000
    inner = open_request(outer.request, key.public, "POST", path, now, 60_000).body
    assert convert(ap.EnrolBody, inner) == ap.EnrolBody(token="enrol_token", hostname="gpu-host-1")

    await client.rotate_key(new_key)
    rotation = convert(ap.RotateKey, client.opened())
    proof = open_request(
        rotation.request, new_key.public, "POST", path.replace("enroll", "rotate-key"), now, 60_000
    )
    assert convert(ap.RotateProof, proof.body).rotates == key.public.agent_id


async def test_what_suanli_submit_sends_decodes() -> None:
    sent: list[dict[str, Any]] = []

    class Api:
        async def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
            sent.append(job)
            return {"id": "job-1"}

    parser = client_cli.build_parser()
    args = parser.parse_args(
        [
            "job", "submit", "--image", "registry.example/t/train:1", "--gpus", "2",
            "--gpu-model", "H100", "--cpus", "8", "--memory", "64GiB", "--min-gpu-memory", "40GiB",
            "--max-duration", "2h", "--max-price-per-gpu-hour", "12.50", "--env", "A=b",
            "--secret-env", "TOKEN=s3cret", "--", "python", "train.py",
        ]
    )  # fmt: skip
    await client_submit.cmd_submit(Api(), args)  # type: ignore[arg-type]  # a stub client
    job = decode_json(api.JobSubmit, json.dumps(sent[0]).encode())
    assert (job.gpus, job.cpus_milli, job.memory_bytes) == (2, 8000, 64 * GIB)
    assert job.command == ["python", "train.py"] and job.secret_env == {"TOKEN": "s3cret"}
    assert job.idempotency_key is not None and job.idempotency_key.startswith("cli-")


def test_optional_fields_keep_todays_defaults() -> None:
    job = decode_json(
        api.JobSubmit,
        b'{"image": "busybox", "gpus": 1, "max_duration_s": 60, '
        b'"max_price_per_gpu_hour_micro_yuan": 1, "idempotency_key": null}',
    )
    assert (job.command, job.env, job.gpu_models, job.min_gpu_memory_bytes) == ([], {}, [], 0)
    # the defaults that depend on gpus are the handler's: left out is not the same as null
    assert job.cpus_milli is msgspec.UNSET and job.memory_bytes is msgspec.UNSET
    assert job.idempotency_key is None
    assert convert(ap.LeasePoll, {}) == ap.LeasePoll(known_version=-1, wait_ms=0)
    # fields this side does not know are ignored on the agent protocol, refused on a job
    gpu = {"index": 0, "uuid": "G", "name": "H100", "memory_total_bytes": 1, "new_reading": 7}
    host = {"cpu_count": 1, "memory_total_bytes": 1, "hostname": "h"}
    convert(ap.Heartbeat, {"inventory": {"gpus": [gpu], "host": host}})


# -- refusals name the field ----------------------------------------------------------------

JOB = {"image": "busybox", "gpus": 1, "max_duration_s": 60, "max_price_per_gpu_hour_micro_yuan": 1}
GPU = {"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "memory_total_bytes": GIB}
HOST = {"cpu_count": 8, "memory_total_bytes": GIB}


def _job(**changes: Any) -> bytes:
    return json.dumps({**JOB, **changes}).encode()


def _beat(ask: Any = 1, gpus: Any = None, host: Any = None) -> dict[str, Any]:
    return {"ask_per_gpu_hour": ask, "inventory": {"gpus": gpus or [GPU], "host": host or HOST}}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (_job(gpus="two"), 'gpus: expected an integer from 1 to 64, got "two"'),
        (_job(gpus=65), "gpus: expected an integer from 1 to 64, got 65"),
        (_job(gpus=1.0), "gpus: expected an integer from 1 to 64, got 1.0"),
        (_job(gpus=True), "gpus: expected an integer from 1 to 64, got true"),
        (b'{"image": "busybox"}', "gpus: expected an integer from 1 to 64, got nothing"),
        (_job(gpus=10**30), "gpus: expected an integer from 1 to 64, got a 31-digit number"),
        (b'{"image": "busybox", "gpus": NaN}', "gpus: expected an integer from 1 to 64, got NaN"),
        (_job(image="busy box"), "image: expected an image reference of 1 to 255 characters"),
        (
            _job(image="busy\ud800box"),
            "image: expected an image reference of 1 to 255 characters without spaces, "
            'got "busy\\ud800box"',
        ),
        (_job(image="busybox\n"), "image: expected an image reference"),
        (_job(command=["echo", "\udfff"]), "command[1]: expected a string of valid Unicode"),
        (_job(env={"A": "a\x00"}), "env.A: expected a string of at most 4096 characters"),
        (
            _job(env={"\u200fA": "x"}),
            'env: expected letters, digits and _, not starting with a digit, got "\\u200fA"',
        ),
        (_job(gpu_models=[""]), "gpu_models[0]: expected a model name of 1 to 128 characters"),
        (_job(idempotency_key="k" * 129), "idempotency_key: expected a string of 1 to 128"),
        (_job(idempotency_key="key\u200f"), "idempotency_key: expected 1 to 128 printable"),
        (_job(cpus_milli=None), "cpus_milli: expected an integer from 100 to 1024000, got null"),
        (
            _job(env={"A": "x"}, secret_env={"A": "y"}),
            "secret_env: expected names env does not have",
        ),
        (_job(command=["x" * 40_000] * 2), "command: expected at most 65536 bytes in all"),
        (_job(unknown_field=1), "unknown_field: unknown field; the fields are image, gpus"),
        (b"[]", "the request body: expected a JSON object with image, gpus, max_duration_s"),
        (b"{", "the request body is not valid JSON"),
        (json.dumps("\ud800").encode(), "the request body: expected a JSON object with image"),
        (_job(gpus="\ud800"), 'gpus: expected an integer from 1 to 64, got "\\ud800"'),
        (json.dumps({"\ud800": 1}).encode(), '"\\u0000": unknown field; the fields are image'),
        (b'{"image": "\xff"}', "the request body is not valid JSON"),
    ],
)
def test_job_refusals_name_the_field(body: bytes, detail: str) -> None:
    with pytest.raises(MessageError) as refused:
        decode_json(api.JobSubmit, body, code="invalid_job")
    assert refused.value.detail.startswith(detail), refused.value.detail
    # bytes that are not JSON are refused before the route looks at them, as today
    code = "invalid" if "not valid JSON" in detail else "invalid_job"
    assert refused.value.as_body() == {"error": code, "detail": refused.value.detail}


@pytest.mark.parametrize(
    ("type_", "body", "detail"),
    [
        (
            ap.Heartbeat,
            _beat(ask=-1),
            "ask_per_gpu_hour: expected an integer from 0 to 1000000000000, or nil, got -1",
        ),
        (ap.Heartbeat, _beat(ask=2**64 - 1), "ask_per_gpu_hour: expected an integer from 0"),
        (
            ap.Heartbeat,
            _beat(gpus=[{**GPU, "memory_total_bytes": -1}]),
            "inventory.gpus[0].memory_total_bytes: expected an integer from 1 to",
        ),
        (
            ap.Heartbeat,
            _beat(gpus=[{**GPU, "uuid": "a\x01"}]),
            'inventory.gpus[0].uuid: expected 1 to 128 printable characters, got "a\\u0001"',
        ),
        (ap.Heartbeat, _beat(gpus=[GPU, GPU]), "inventory.gpus: expected each GPU UUID once"),
        (
            ap.Heartbeat,
            _beat(gpus=[{**GPU, "healthy": None}]),
            "inventory.gpus[0].healthy: expected true or false, got nil",
        ),
        (
            ap.Heartbeat,
            _beat(host={"cpu_count": 0, "memory_total_bytes": 1}),
            "inventory.host.cpu_count: expected an integer from 1 to 65536, got 0",
        ),
        (ap.Heartbeat, {}, "inventory: expected a map with gpus, host, got nothing"),
        (ap.Heartbeat, [], "the body: expected a map with inventory, got a list of 0 items"),
        (
            ap.LeasePoll,
            {"known_version": -1, "wait_ms": -5},
            "wait_ms: expected an integer of at least 0, got -5",
        ),
        (ap.LeasePoll, {"known_version": "1"}, 'known_version: expected an integer, got "1"'),
        (
            ap.StatusReport,
            {"lease_id": "l", "event": "bogus"},
            'event: expected one of exited, failed, started, got "bogus"',
        ),
        (
            ap.StatusReport,
            {"lease_id": "l", "event": "exited"},
            "exit_code: expected an integer from -2147483648 to 2147483647 in an exit report, "
            "got nothing",
        ),
        (
            ap.StatusReport,
            {"lease_id": "l", "event": "exited", "exit_code": 2**31},
            "exit_code: expected an integer from -2147483648 to 2147483647, or nil, got 2147483648",
        ),
        (
            ap.StatusReport,
            {"lease_id": "l", "event": "failed"},
            "reason_code: expected a string of at most 64 characters",
        ),
        (
            ap.StatusReport,
            {"lease_id": "l", "event": "started", "reason": "x" * 513},
            "reason: expected a string of at most 512 characters, or nil",
        ),
        (ap.StatusReport, {"event": "started"}, "lease_id: expected a string, got nothing"),
        (
            ap.LogChunk,
            {"lease_id": "l", "offset": -1, "data": b"x"},
            "offset: expected an integer of at least 0, got -1",
        ),
        (
            ap.LogChunk,
            {"lease_id": "l", "offset": 0, "data": "x"},
            'data: expected bytes of at most 262144 bytes, got "x"',
        ),
        (
            ap.ReceiptBatch,
            {"receipts": []},
            "receipts: expected a list of 1 to 500 items, got a list of 0 items",
        ),
        (
            ap.ReceiptBatch,
            {"receipts": [b"x"] * 501},
            "receipts: expected a list of 1 to 500 items, got a list of 501 items",
        ),
        (ap.ReceiptBatch, {"receipts": [b"x", "y"]}, 'receipts[1]: expected bytes, got "y"'),
        (
            ap.EnrolBody,
            {"token": "t", "hostname": ""},
            'hostname: expected a string of 1 to 253 characters, got ""',
        ),
        (
            ap.EnrolBody,
            {"token": "t", "hostname": "a\tb"},
            "hostname: expected 1 to 253 printable characters",
        ),
        (ap.EnrolBody, {"hostname": "h"}, "token: expected a string, got nothing"),
        (
            ap.RotateProof,
            {"rotates": "a", "also": 1},
            "also: unknown field; the fields are rotates",
        ),
        (ap.RotateKey, {"public_key": "k", "request": b""}, 'public_key: expected bytes, got "k"'),
    ],
)
def test_agent_refusals_name_the_field(type_: Any, body: Any, detail: str) -> None:
    with pytest.raises(MessageError) as refused:
        convert(type_, body)
    assert refused.value.detail.startswith(detail), refused.value.detail
    assert refused.value.code == "invalid"
    # the same body as raw msgpack gets the same sentence
    with pytest.raises(MessageError) as again:
        decode_msgpack(type_, canonical.encode(body))
    assert again.value.detail == refused.value.detail


def test_log_queries_and_answers() -> None:
    found = log_messages.FoundEntry(index=7, kind="receipt", digest="ab" * 32)
    assert msgspec.json.decode(msgspec.json.encode(found)) == {
        "index": 7,
        "kind": "receipt",
        "digest": "ab" * 32,
    }
    page = msgspec.json.encode(log_messages.EntriesPage(start=0, end=1, entries=[b"\x00\x01"]))
    assert json.loads(page)["entries"] == ["AAE="]  # base64, as the route sends it today
    assert decode_json(log_messages.EntriesPage, page).entries == [b"\x00\x01"]
    with pytest.raises(MessageError, match=r'^digest: expected 64 hex digits, got "xyz"$'):
        decode_query(log_messages.FindQuery, {"digest": "xyz"})


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"limit": "²"}, 'limit: expected an integer from 1 to 1000, got "²"'),
        ({"limit": "١٢"}, 'limit: expected an integer from 1 to 1000, got "١٢"'),
        ({"limit": "0"}, "limit: expected an integer from 1 to 1000, got 0"),
        ({"limit": "1001"}, "limit: expected an integer from 1 to 1000, got 1001"),
        ({"limit": "-1"}, 'limit: expected an integer from 1 to 1000, got "-1"'),
        ({"limit": "1.5"}, 'limit: expected an integer from 1 to 1000, got "1.5"'),
        ({"limit": ""}, 'limit: expected an integer from 1 to 1000, got ""'),
        ({"limit": "18446744073709551616"}, "limit: expected an integer from 1 to 1000, got"),
        ({"state": "Pending"}, "state: expected one of cancelled, failed, leased, lost, pending"),
        ({"state": "pending\u200f"}, "state: expected one of"),
    ],
)
def test_queries_are_read_exactly(query: dict[str, str], detail: str) -> None:
    with pytest.raises(MessageError) as refused:
        decode_query(api.JobListQuery, query)
    assert refused.value.detail.startswith(detail), refused.value.detail


def test_queries_take_their_declared_defaults() -> None:
    assert decode_query(api.JobListQuery, {"other": "x"}) == api.JobListQuery()
    assert decode_query(api.JobListQuery, {"state": "running", "limit": "7"}) == (
        api.JobListQuery(state="running", limit=7)
    )
    assert decode_query(api.JobLogQuery, {}) == api.JobLogQuery(offset=0, limit=256 * 1024)
    page = decode_query(log_messages.EntriesQuery, {"start": "0", "end": "12"})
    assert (page.start, page.end) == (0, 12)
    with pytest.raises(MessageError, match="^end: expected an integer from 0 to"):
        decode_query(log_messages.EntriesQuery, {"start": "0"})


def test_a_non_msgpack_body_is_refused_as_such() -> None:
    with pytest.raises(MessageError, match="not valid msgpack"):
        decode_msgpack(ap.EnrolRequest, b"\xc1")


async def test_decoding_never_touches_the_signed_bytes() -> None:
    """A signed request is verified over the bytes received; the door only reads the body the
    verified envelope carries, so the bytes the log keeps are the bytes the agent signed."""
    key = PrivateKey.generate()
    client = Recorder(key)
    await client.status("lease-1", "exited", exit_code=0)
    path, envelope = client.sent[-1]
    before = bytes(envelope)
    report = convert(ap.StatusReport, client.opened())
    assert envelope == before and report.exit_code == 0
