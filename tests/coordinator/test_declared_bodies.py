"""The declared types accept exactly what the hand-written checks they replaced accepted:
generated bodies, near-valid with odd values, are refused by both or by neither (the door
changed no one's way in). The old checks are kept here, as the record, where the rooms no
longer have them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.jobs import parse_job_request
from coordinator.market import parse_inventory
from shared.gpu_models import canonical_model
from shared.messages import MessageError, api, convert, decode_json
from shared.messages import agent_protocol as ap

ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "\u200f", "\u202eevil", "A\n", "1A", "_", "é"]
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1, 0, 1, 64, 65, 10**12, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
    st.lists(st.sampled_from(["a", "", "\x00", 1]), max_size=3),
    st.dictionaries(
        st.sampled_from(["A", "a b", "_x", "\u200fA"]),
        st.sampled_from(["v", 1, "\x00"]),
        max_size=2,
    ),
)
JOB = {
    "image": "busybox:latest",
    "gpus": 1,
    "max_duration_s": 60,
    "max_price_per_gpu_hour_micro_yuan": 1_000,
    "command": ["true"],
    "env": {"A": "b"},
}
JOB_KEYS = [
    *JOB,
    "secret_env",
    "min_gpu_memory_bytes",
    "gpu_models",
    "cpus_milli",
    "memory_bytes",
    "idempotency_key",
    "unknown_field",
]
EXAMPLES = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def near_valid(draw: st.DrawFn, valid: dict[str, Any], keys: list[str]) -> Any:
    body = dict(valid)
    for name in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if draw(st.booleans()) and name in body:
            del body[name]
        else:
            body[name] = draw(ODD)
    return body if draw(st.integers(0, 20)) else draw(ODD)


SPEC_KEYS = {*JOB_KEYS} - {"unknown_field"}
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _unicode(value: object, max_length: int) -> bool:
    if type(value) is not str or len(value) > max_length or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _env_ok(env: object) -> bool:
    return (
        type(env) is dict
        and len(env) <= 128
        and all(ENV_NAME.fullmatch(name) and _unicode(v, 4096) for name, v in env.items())
    )


def _int_in(body: dict[str, Any], name: str, low: int, high: int, default: int | None) -> bool:
    value = body.get(name, default)
    return type(value) is int and low <= value <= high


def _today_accepts_job(body: Any) -> bool:
    """The hand-written checks POST /v1/jobs made before the door decoded its body (kept here
    as the record of who got in), up to where it looks at the enterprise's state."""
    if not isinstance(body, dict) or set(body) - SPEC_KEYS:
        return False
    key = body.get("idempotency_key")
    if key is not None and (
        type(key) is not str or not 0 < len(key) <= 128 or not key.isprintable()
    ):
        return False
    image, command = body.get("image"), body.get("command", [])
    if type(image) is not str or not IMAGE.fullmatch(image):
        return False
    if type(command) is not list or len(command) > 256:
        return False
    if not all(_unicode(part, 64 * 1024) for part in command):
        return False
    if sum(len(part.encode()) for part in command) > 64 * 1024:
        return False
    env, secret_env = body.get("env", {}), body.get("secret_env", {})
    if not _env_ok(env) or not _env_ok(secret_env) or set(env) & set(secret_env):
        return False
    if len(env) + len(secret_env) > 128 or not _int_in(body, "gpus", 1, 64, None):
        return False
    models = body.get("gpu_models", [])
    if type(models) is not list or len(models) > 16:
        return False
    if any(not _unicode(m, 128) or not m for m in models):
        return False
    gpus = body["gpus"]
    return all(
        _int_in(body, *bounds)
        for bounds in [
            ("min_gpu_memory_bytes", 0, 1 << 50, 0),
            ("cpus_milli", 100, 1024 * 1000, 4000 * gpus),
            ("memory_bytes", 64 << 20, 1 << 44, gpus * (16 << 30)),
            ("max_duration_s", 1, 30 * 86_400, None),
            ("max_price_per_gpu_hour_micro_yuan", 1, 10**12, None),
        ]
    )


def _door_accepts(type_: Any, body: Any, raw: bytes | None = None) -> bool:
    try:
        decode_json(type_, raw) if raw is not None else convert(type_, body)
    except MessageError:
        return False
    return True


@EXAMPLES
@given(near_valid(JOB, JOB_KEYS))
def test_job_submission(body: Any) -> None:
    raw = json.dumps(body).encode()
    assert _door_accepts(api.JobSubmit, None, raw) == _today_accepts_job(json.loads(raw)), body


GPU = {"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "memory_total_bytes": 1 << 30}
GPU_KEYS = [*GPU, "memory_used_bytes", "utilization_gpu_pct", "temperature_c", "power_mw",
            "power_limit_mw", "energy_mj", "healthy", "health_reason", "extra"]  # fmt: skip
HOST = {"cpu_count": 8, "memory_total_bytes": 1 << 30}
HOST_KEYS = [*HOST, "memory_available_bytes", "disk_free_bytes", "hostname"]


@st.composite
def heartbeats(draw: st.DrawFn) -> Any:
    gpus = draw(st.lists(near_valid(GPU, GPU_KEYS), max_size=3))
    inventory = {"gpus": gpus, "host": draw(near_valid(HOST, HOST_KEYS))}
    inventory = draw(near_valid(inventory, ["gpus", "host", "driver_version"]))
    body = {"ask_per_gpu_hour": 1, "inventory": inventory}
    return draw(near_valid(body, ["ask_per_gpu_hour", "inventory"]))


def _int_ok(data: dict[str, Any], name: str, optional: bool = False, low: int = 0,
            high: int = 2**63 - 1) -> bool:  # fmt: skip
    value = data.get(name)
    return (value is None and optional) or (type(value) is int and low <= value <= high)


def _text_ok(data: dict[str, Any], name: str, optional: bool = False) -> bool:
    value = data.get(name)
    if value is None and optional:
        return True
    return type(value) is str and 0 < len(value) <= 128 and value.isprintable()


def _today_accepts_heartbeat(body: Any) -> bool:
    """The hand-written checks heartbeats passed before the door decoded them (kept here as
    the record of who got in)."""
    if type(body) is not dict:
        return False
    ask = body.get("ask_per_gpu_hour")
    if ask is not None and (type(ask) is not int or not 0 <= ask <= 10**12):
        return False
    inventory = body.get("inventory")
    if type(inventory) is not dict:
        return False
    gpus, host = inventory.get("gpus"), inventory.get("host")
    if type(gpus) is not list or len(gpus) > 64 or type(host) is not dict:
        return False
    for gpu in gpus:
        if type(gpu) is not dict or type(gpu.get("healthy", True)) is not bool:
            return False
        if not (
            _int_ok(gpu, "index", high=256)
            and _text_ok(gpu, "uuid")
            and _text_ok(gpu, "name")
            and _int_ok(gpu, "memory_total_bytes", low=1)
            and _int_ok(gpu, "memory_used_bytes", optional=True)
            and _int_ok(gpu, "utilization_gpu_pct", optional=True, high=100)
            and _int_ok(gpu, "temperature_c", optional=True, low=-100, high=200)
            and all(_int_ok(gpu, n, optional=True) for n in ("power_mw", "power_limit_mw"))
            and _int_ok(gpu, "energy_mj", optional=True)
            and _text_ok(gpu, "health_reason", optional=True)
        ):
            return False
    if len({gpu["uuid"] for gpu in gpus}) != len(gpus):
        return False
    return (
        _int_ok(host, "cpu_count", low=1, high=1 << 16)
        and _int_ok(host, "memory_total_bytes", low=1)
        and _int_ok(host, "memory_available_bytes", optional=True)
        and _int_ok(host, "disk_free_bytes", optional=True)
        and _text_ok(inventory, "driver_version", optional=True)
    )


def test_the_door_hands_the_market_its_inventory() -> None:
    """parse_inventory maps a decoded heartbeat: canonical model names, unreported memory use
    as 0, GPUs by index."""
    gpus = [{**GPU, "index": 1, "uuid": "GPU-1"}, GPU]
    body = convert(ap.Heartbeat, {"inventory": {"gpus": gpus, "host": HOST}})
    inventory = parse_inventory(body.inventory)
    assert [gpu.uuid for gpu in inventory.gpus] == ["GPU-0", "GPU-1"]
    assert {gpu.memory_used_bytes for gpu in inventory.gpus} == {0}
    assert inventory.gpus[0].model == canonical_model("NVIDIA H100") != "NVIDIA H100"


@EXAMPLES
@given(heartbeats())
def test_heartbeat(body: Any) -> None:
    assert _door_accepts(ap.Heartbeat, body) == _today_accepts_heartbeat(body), body


def _today_accepts_poll(body: Any) -> bool:
    if type(body) is not dict:
        return False
    known, wait_ms = body.get("known_version", -1), body.get("wait_ms", 0)
    return type(known) is int and type(wait_ms) is int and wait_ms >= 0


def _today_accepts_chunk(body: Any) -> bool:
    if type(body) is not dict or type(body.get("lease_id")) is not str:
        return False
    offset, data = body.get("offset"), body.get("data")
    return type(offset) is int and offset >= 0 and type(data) is bytes and len(data) <= 256 * 1024


def _today_accepts_batch(body: Any) -> bool:
    envelopes = body.get("receipts") if type(body) is dict else None
    return (
        type(envelopes) is list
        and 0 < len(envelopes) <= 500
        and all(type(e) is bytes for e in envelopes)
    )


BYTES_ODD = st.one_of(ODD, st.binary(max_size=8), st.lists(st.binary(max_size=4), max_size=3))


@pytest.mark.parametrize(
    ("type_", "today", "valid"),
    [
        (ap.LeasePoll, _today_accepts_poll, {"known_version": -1, "wait_ms": 0}),
        (ap.LogChunk, _today_accepts_chunk, {"lease_id": "l", "offset": 0, "data": b"x"}),
        (ap.ReceiptBatch, _today_accepts_batch, {"receipts": [b"x"]}),
    ],
)
def test_small_agent_bodies(type_: Any, today: Any, valid: dict[str, Any]) -> None:
    @EXAMPLES
    @given(st.data())
    def one(data: st.DataObject) -> None:
        body = dict(valid)
        for name in data.draw(st.lists(st.sampled_from([*valid, "extra"]), max_size=2)):
            body[name] = data.draw(BYTES_ODD)
        if data.draw(st.booleans()) and body:
            del body[data.draw(st.sampled_from(sorted(body)))]
        assert _door_accepts(type_, body) == today(body), body

    one()


def test_a_submission_takes_the_defaults_its_gpus_imply() -> None:
    body = decode_json(
        api.JobSubmit, json.dumps({**JOB, "gpus": 2, "env": {"B": "1", "A": "2"}}).encode()
    )
    request = parse_job_request(body)
    assert (request.cpus_milli, request.memory_bytes) == (8000, 2 * (16 << 30))
    assert request.env == (("A", "2"), ("B", "1"))
