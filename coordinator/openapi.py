"""The OpenAPI 3.1 document of the coordinator, served at /v1/openapi.json, generated from the
declared message types (`shared.messages`) and a route table: nothing in it is written twice."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from shared.messages import ErrorBody, api, log
from shared.messages import agent_protocol as ap

JSON, MSGPACK, TEXT = "application/json", "application/msgpack", "text/plain"
REF = "#/components/schemas/{name}"
Access = Literal["bearer", "signed", "enrolment", "public"]
ERRORS: dict[Access, tuple[int, ...]] = {
    "bearer": (400, 401, 403, 404, 409, 422, 429),
    "signed": (400, 401, 404, 409, 413, 415, 422, 429),
    "enrolment": (401, 409, 413, 415, 422),
    "public": (),
}
WORDS = {
    400: "Bad request",
    401: "Missing or invalid credentials",
    403: "Not allowed for this role",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Body too large",
    415: "Wrong content type",
    422: "A field is invalid; the detail names it",
    429: "Too many requests from this agent or token; retry after the Retry-After header's seconds",
}
ENVELOPE = (
    "a `request` envelope [payload, key_id, signature], Ed25519-signed, whose payload is "
    "[method, path, issued_at_ms, nonce, body]; x-suanli-body is the body's type"
)


class Route(NamedTuple):
    """One documented operation. `request` is the JSON body, or for agent routes the body the
    signed envelope carries; `response` a declared type, or a media type for plain text."""

    method: str
    path: str
    request: type[msgspec.Struct] | None
    response: type[msgspec.Struct] | str | None
    summary: str
    access: Access = "bearer"
    query: type[msgspec.Struct] | None = None
    status: int = 200
    headers: tuple[str, ...] = ()
    replayed: str | None = None  # a 200 answer beside a 201 (an idempotent retry)


def _agent(
    path: str, request: type[msgspec.Struct], response: type[msgspec.Struct], summary: str
) -> Route:
    return Route("POST", "/v1/agent/" + path, request, response, summary, "signed")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", None, api.Health, "Liveness", "public"),
    Route("GET", "/metrics", None, TEXT, "Prometheus metrics (text exposition format)", "public"),
    Route("GET", "/v1/openapi.json", None, None, "This document", "public"),
    Route(
        "POST",
        "/v1/agent/enroll",
        ap.EnrolRequest,
        ap.EnrolAnswer,
        "Register an agent key with a one-time enrolment token: `request` is a signed request "
        "envelope, by the key it registers, whose body is an EnrolBody",
        "enrolment",
        status=201,
    ),
    _agent(
        "heartbeat",
        ap.Heartbeat,
        ap.HeartbeatAnswer,
        "Report inventory, telemetry and ask price; capacity is reconciled",
    ),
    _agent(
        "leases",
        ap.LeasePoll,
        ap.LeasesAnswer,
        "Long-poll the agent's leases: returns when they change or after wait_ms",
    ),
    _agent(
        "status",
        ap.StatusReport,
        ap.StatusAnswer,
        "Report a lease's container started, exited (exit_code) or failed (reason_code)",
    ),
    _agent("logs", ap.LogChunk, ap.LogAnswer, "Append a chunk of a job's log at an offset"),
    _agent(
        "receipts",
        ap.ReceiptBatch,
        ap.ReceiptsAnswer,
        "Submit a batch of sealed usage receipts: one result per receipt, accepted (naming its "
        "acknowledgement by position) or rejected naming the rule it broke; acknowledgements "
        "are countersigned 'acceptance' envelopes",
    ),
    _agent(
        "rotate-key",
        ap.RotateKey,
        ap.RotateAnswer,
        "Replace the agent's key (signed by the old key; `request` is the new key's signed "
        "request whose body is a RotateProof); only while the agent holds no active lease. The "
        "new key is logged as an agent_key entry and the old one is refused from then on",
    ),
    Route(
        "POST",
        "/v1/jobs",
        api.JobSubmit,
        api.JobView,
        "Post a job (enterprise)",
        status=201,
        headers=("Idempotency-Key",),
        replayed="the job this idempotency key already created",
    ),
    Route(
        "GET",
        "/v1/jobs",
        None,
        api.JobList,
        "List your jobs, newest first (auditors: all, without env values)",
        query=api.JobListQuery,
    ),
    Route("GET", "/v1/jobs/{job_id}", None, api.JobView, "Show a job"),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        None,
        api.JobView,
        "Cancel a job; a running one stops when its agent confirms",
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/logs",
        None,
        api.JobLogPage,
        "Read a job's log from an offset (the enterprise's own jobs; auditors get 403)",
        query=api.JobLogQuery,
    ),
    Route(
        "GET", "/v1/market", None, api.Market, "Capacity by GPU model, asks and the pool in PFLOPS"
    ),
    Route(
        "GET",
        "/v1/account",
        None,
        api.Account,
        "Who this token is; for an enterprise also its voucher entitlement, credit, "
        "reservations and statements",
    ),
    Route(
        "GET",
        "/v1/vouchers/pool",
        None,
        api.VoucherPool,
        "The year's public voucher pool: granted, used, remaining (no token)",
        "public",
    ),
    Route(
        "GET",
        "/v1/ledger/balances",
        None,
        api.LedgerBalances,
        "Posted balances of the receivable, earnings, pool and cap accounts with the log size "
        "they belong to (auditors), to compare with the log's postings",
    ),
    Route(
        "GET",
        "/v1/log/checkpoint",
        None,
        TEXT,
        "The latest signed checkpoint (C2SP tlog-checkpoint signed note)",
        "public",
    ),
    Route(
        "GET",
        "/v1/log/key",
        None,
        TEXT,
        "The log's C2SP verifier key (name+keyhash+base64 key)",
        "public",
    ),
    Route(
        "GET",
        "/v1/log/key-changes",
        None,
        log.KeyChanges,
        "The indices of the log_key entries (rotations of the log's key), in log order",
        "public",
    ),
    Route(
        "GET",
        "/v1/log/entries",
        None,
        log.EntriesPage,
        "Log entries [start, end), base64; a page may stop early (at most 1000 entries)",
        "public",
        log.EntriesQuery,
    ),
    Route(
        "GET",
        "/v1/log/proof/inclusion",
        None,
        log.InclusionProof,
        "RFC 9162 inclusion proof of entry `index` in the tree of `size` entries",
        "public",
        log.InclusionQuery,
    ),
    Route(
        "GET",
        "/v1/log/proof/consistency",
        None,
        log.ConsistencyProof,
        "RFC 9162 consistency proof from the tree of `old` entries to that of `new`",
        "public",
        log.ConsistencyQuery,
    ),
    Route(
        "GET",
        "/v1/log/find",
        None,
        log.FoundEntry,
        "The index of a receipt (by the SHA-256 of its envelope) or of an agent's key",
        "public",
        log.FindQuery,
    ),
)
# carried inside other bodies' signed bytes, so no route names them directly
ALSO_DECLARED: tuple[type[msgspec.Struct], ...] = (ErrorBody, ap.EnrolBody, ap.RotateProof)
SECURITY = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "enterprise or auditor token from the operator",
    },
    "agentSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Unused",
        "description": "requests are Ed25519-signed envelopes",
    },
}


def declared_types(routes: Sequence[Route] = ROUTES) -> list[type[msgspec.Struct]]:
    """Every body type the routes name, once, in route order, and the ones carried inside."""
    found: dict[type[msgspec.Struct], None] = {}
    for route in routes:
        for tp in (route.request, route.response):
            if isinstance(tp, type):
                found[tp] = None
    for tp in ALSO_DECLARED:
        found[tp] = None
    return list(found)


def openapi_document(routes: Sequence[Route] = ROUTES) -> dict[str, Any]:
    """The document for `routes` (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document(tuple(routes)))


@functools.lru_cache(maxsize=4)
def _document(routes: tuple[Route, ...]) -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(declared_types(routes), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Suanli coordinator",
            "version": "1",
            "description": "GPU compute marketplace: jobs, agents, auctions and leases.",
        },
        "paths": paths,
        "components": {"securitySchemes": SECURITY, "schemas": schemas},
    }


def _ref(tp: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": REF.format(name=tp.__name__)}


def _operation(route: Route) -> dict[str, Any]:
    agent = route.access in ("signed", "enrolment")
    media = MSGPACK if agent else JSON
    security: dict[str, list[dict[str, list[str]]]] = {
        "bearer": [{"bearer": []}],
        "signed": [{"agentSignature": []}],
    }
    operation: dict[str, Any] = {
        "summary": route.summary,
        "security": security.get(route.access, []),
    }
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        schema: dict[str, Any] = _ref(route.request)
        if route.access == "signed":
            schema = {
                "type": "string",
                "format": "binary",
                "description": ENVELOPE,
                "x-suanli-body": schema,
            }
        operation["requestBody"] = {"required": True, "content": {media: {"schema": schema}}}
    responses = {
        str(route.status): _answer(
            route.response, media, "Created" if route.status == 201 else "OK"
        )
    }
    if route.replayed is not None:
        responses["200"] = _answer(route.response, media, route.replayed)
    errors = ERRORS[route.access] or ((400, 404, 422) if route.query else ())
    for status in errors:
        responses[str(status)] = _answer(ErrorBody, media, WORDS[status])
    operation["responses"] = responses
    return operation


def _answer(response: type[msgspec.Struct] | str | None, media: str, words: str) -> dict[str, Any]:
    if response is None:
        return {"description": words, "content": {JSON: {"schema": {"type": "object"}}}}
    if isinstance(response, str):
        return {"description": words, "content": {response: {"schema": {"type": "string"}}}}
    return {"description": words, "content": {media: {"schema": _ref(response)}}}


def _parameters(route: Route) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", route.path)
    ]
    if route.query is not None:
        _, components = msgspec.json.schema_components([route.query], ref_template=REF)
        properties = components[route.query.__name__]["properties"]
        required = set(components[route.query.__name__].get("required", ()))
        for name, field_schema in properties.items():
            parameter = {"name": name, "in": "query", "required": name in required}
            description = field_schema.pop("description", None)
            if description:
                parameter["description"] = description
            out.append({**parameter, "schema": field_schema})
    out.extend(
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
        for name in route.headers
    )
    return out
