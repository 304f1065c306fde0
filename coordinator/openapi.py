"""The OpenAPI 3.1 document of the coordinator's HTTP API, served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from coordinator.jobs import JOB_STATES, SPEC_FIELDS

ERROR = {"$ref": "#/components/schemas/Error"}
JOB = {"$ref": "#/components/schemas/Job"}
MSGPACK = "application/msgpack"


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "Bad request",
        401: "Missing or invalid credentials",
        403: "Not allowed for this role",
        404: "Not found",
        409: "Conflicts with the current state",
        413: "Body too large",
        415: "Wrong content type",
        422: "A field is invalid; the detail names it",
        429: "Too many requests from this agent or token; retry after the Retry-After "
        "header's seconds",
    }
    return {
        str(s): {"description": words[s], "content": {"application/json": {"schema": ERROR}}}
        for s in statuses
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _signed(description: str) -> dict[str, Any]:
    return {
        "summary": description,
        "security": [{"agentSignature": []}],
        "requestBody": {
            "required": True,
            "content": {
                MSGPACK: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "a `request` envelope: [payload, key_id, signature] with payload "
                        "[method, path, issued_at_ms, nonce, body]",
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "msgpack map", "content": {MSGPACK: {}}},
            **_errors(400, 401, 404, 409, 413, 415, 422, 429),
        },
    }


def _bearer(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {**responses, **_errors(400, 401, 403, 404, 422, 429)},
        **extra,
    }


def _log(
    summary: str,
    query: dict[str, str],
    schema: dict[str, Any],
    media: str = "application/json",
    errors: tuple[int, ...] = (400, 404, 422),
) -> dict[str, Any]:
    """A public route of the transparency log (no token)."""
    return {
        "get": {
            "summary": summary,
            "security": [],
            "parameters": [
                {
                    "name": name,
                    "in": "query",
                    "required": not help.startswith("one of"),
                    "description": help,
                    "schema": {"type": "string"},
                }
                for name, help in query.items()
            ],
            "responses": {
                "200": {"description": "OK", "content": {media: {"schema": schema}}},
                **_errors(*errors),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    spec_properties: dict[str, Any] = {
        name: {"description": help} for name, help in SPEC_FIELDS.items()
    }
    for name in (
        "gpus",
        "min_gpu_memory_bytes",
        "cpus_milli",
        "memory_bytes",
        "max_duration_s",
        "max_price_per_gpu_hour_micro_yuan",
    ):
        spec_properties[name]["type"] = "integer"
    spec_properties["image"]["type"] = "string"
    spec_properties["command"].update(type="array", items={"type": "string"})
    spec_properties["gpu_models"].update(type="array", items={"type": "string"})
    spec_properties["env"].update(type="object", additionalProperties={"type": "string"})
    spec_properties["secret_env"].update(type="object", additionalProperties={"type": "string"})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Suanli coordinator",
            "version": "1",
            "description": "GPU compute marketplace: jobs, agents, auctions and leases.",
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "alive")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {}},
                        }
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI")},
                }
            },
            "/v1/agent/enroll": {
                "post": {
                    "summary": "Register an agent key with a one-time enrolment token",
                    "security": [],
                    "requestBody": {
                        "required": True,
                        "content": {
                            MSGPACK: {
                                "schema": {
                                    "type": "object",
                                    "description": "{public_key: bytes, request: signed request "
                                    "envelope whose body is {token, hostname}}",
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {"description": "enrolled", "content": {MSGPACK: {}}},
                        **_errors(401, 409, 413, 415, 422),
                    },
                }
            },
            "/v1/agent/heartbeat": {
                "post": _signed("Report inventory, telemetry and ask price; capacity is reconciled")
            },
            "/v1/agent/leases": {
                "post": _signed(
                    "Long-poll the agent's leases: returns when they change or after wait_ms"
                )
            },
            "/v1/agent/status": {
                "post": _signed(
                    "Report a lease's container started, exited (exit_code) or failed (reason_code)"
                )
            },
            "/v1/agent/logs": {"post": _signed("Append a chunk of a job's log at an offset")},
            "/v1/agent/receipts": {
                "post": _signed(
                    "Submit a batch of sealed usage receipts: {results: one per receipt, accepted "
                    "(naming its acknowledgement by position) or rejected naming the rule it broke; "
                    "acknowledgements: countersigned 'acceptance' envelopes}"
                )
            },
            "/v1/agent/rotate-key": {
                "post": _signed(
                    "Replace the agent's key (signed by the old key; body {public_key, request: the "
                    "new key's signed request {rotates: agent_id}}); only while the agent holds no "
                    "active lease. The new key is logged as an agent_key entry and the old one is "
                    "refused from then on"
                )
            },
            "/v1/jobs": {
                "post": _bearer(
                    "Post a job (enterprise)",
                    {
                        "201": _json(JOB, "created"),
                        "200": _json(JOB, "the job this idempotency key already created"),
                    },
                    requestBody={
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "image",
                                        "gpus",
                                        "max_duration_s",
                                        "max_price_per_gpu_hour_micro_yuan",
                                    ],
                                    "properties": {
                                        **spec_properties,
                                        "idempotency_key": {"type": "string", "maxLength": 128},
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    parameters=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                    ],
                ),
                "get": _bearer(
                    "List your jobs (auditors: all, without env values)",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"jobs": {"type": "array", "items": JOB}},
                            },
                            "jobs, newest first",
                        )
                    },
                    parameters=[
                        {"name": "state", "in": "query", "schema": {"enum": list(JOB_STATES)}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                ),
            },
            "/v1/jobs/{job_id}": {
                "get": _bearer("Show a job", {"200": _json(JOB, "the job")}, parameters=job_id)
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": _bearer(
                    "Cancel a job; a running one stops when its agent confirms",
                    {"200": _json(JOB, "the job")},
                    parameters=job_id,
                )
            },
            "/v1/jobs/{job_id}/logs": {
                "get": _bearer(
                    "Read a job's log from an offset (the enterprise's own jobs; auditors get 403)",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "data": {"type": "string"},
                                    "offset": {"type": "integer"},
                                    "next_offset": {"type": "integer"},
                                    "complete": {"type": "boolean"},
                                },
                            },
                            "a chunk of the log",
                        )
                    },
                    parameters=[
                        *job_id,
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                )
            },
            "/v1/market": {
                "get": _bearer(
                    "Capacity by GPU model, asks and the pool in PFLOPS",
                    {"200": _json({"type": "object"}, "market summary")},
                )
            },
            "/v1/account": {
                "get": _bearer(
                    "Who this token is; for an enterprise also its voucher entitlement, credit, "
                    "reservations and statements",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "role": {"type": "string"},
                                    "id": {"type": "string"},
                                },
                            },
                            "the account",
                        )
                    },
                )
            },
            "/v1/ledger/balances": {
                "get": _bearer(
                    "Posted balances of the receivable, earnings, pool and cap accounts with the log "
                    "size they belong to (auditors), to compare with the log's postings",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "log_size": {"type": "integer"},
                                    "accounts": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "balances",
                        )
                    },
                )
            },
            "/v1/vouchers/pool": {
                "get": {
                    "summary": "The year's public voucher pool: granted, used, remaining (no token)",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "pool totals in micro-yuan")},
                }
            },
            "/v1/log/checkpoint": _log(
                "The latest signed checkpoint (C2SP tlog-checkpoint signed note)",
                {},
                {"type": "string"},
                "text/plain",
                (),
            ),
            "/v1/log/key": _log(
                "The log's C2SP verifier key (name+keyhash+base64 key)",
                {},
                {"type": "string"},
                "text/plain",
                (),
            ),
            "/v1/log/key-changes": _log(
                "The indices of the log_key entries (rotations of the log's key), in log order",
                {},
                {
                    "type": "object",
                    "properties": {"indices": {"type": "array", "items": {"type": "integer"}}},
                },
                errors=(),
            ),
            "/v1/log/entries": _log(
                "Log entries [start, end), base64; a page may stop early (at most 1000 entries)",
                {"start": "first index", "end": "index after the last (at most the log's size)"},
                {
                    "type": "object",
                    "properties": {
                        "start": {"type": "integer"},
                        "end": {"type": "integer"},
                        "entries": {
                            "type": "array",
                            "items": {"type": "string", "contentEncoding": "base64"},
                        },
                    },
                },
            ),
            "/v1/log/proof/inclusion": _log(
                "RFC 9162 inclusion proof of entry `index` in the tree of `size` entries",
                {"index": "entry index", "size": "tree size"},
                {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "size": {"type": "integer"},
                        "proof": {"type": "array", "items": {"type": "string"}},
                    },
                },
            ),
            "/v1/log/proof/consistency": _log(
                "RFC 9162 consistency proof from the tree of `old` entries to that of `new`",
                {"old": "older tree size (at least 1)", "new": "newer tree size"},
                {
                    "type": "object",
                    "properties": {
                        "old": {"type": "integer"},
                        "new": {"type": "integer"},
                        "proof": {"type": "array", "items": {"type": "string"}},
                    },
                },
            ),
            "/v1/log/find": _log(
                "The index of a receipt (by the SHA-256 of its envelope) or of an agent's key",
                {
                    "digest": "one of digest and agent_id: 64 hex digits",
                    "agent_id": "one of digest and agent_id: 64 hex digits",
                },
                {
                    "type": "object",
                    "properties": {"index": {"type": "integer"}, "kind": {"type": "string"}},
                },
            ),
        },
        "components": {
            "securitySchemes": {
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
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "Job": {
                    "type": "object",
                    "required": [
                        "id",
                        "state",
                        "reason",
                        "agent_id",
                        "gpu_uuids",
                        "price_per_gpu_hour_micro_yuan",
                        "started_at_ms",
                        "ended_at_ms",
                        "exit_code",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"enum": list(JOB_STATES)},
                        "reason": {"type": ["string", "null"]},
                        "reason_detail": {"type": ["string", "null"]},
                        "agent_id": {"type": ["string", "null"]},
                        "gpu_uuids": {"type": "array", "items": {"type": "string"}},
                        "price_per_gpu_hour_micro_yuan": {"type": ["integer", "null"]},
                        "started_at_ms": {"type": ["integer", "null"]},
                        "ended_at_ms": {"type": ["integer", "null"]},
                        "exit_code": {"type": ["integer", "null"]},
                        "charged_micro_yuan": {"type": "integer"},
                        "voucher_micro_yuan": {"type": "integer"},
                        "deferred_micro_yuan": {"type": "integer"},
                    },
                },
            },
        },
    }
