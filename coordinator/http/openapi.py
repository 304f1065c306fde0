"""The OpenAPI 3.1 document of the coordinator, served at /v1/openapi.json, generated from the
declared message types (`shared.messages`) and the route declarations of the route table
(`coordinator.http.routes`) the router is built from: nothing in it is written twice."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from shared.messages import ErrorBody
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


def declared_types(routes: Sequence[Route]) -> list[type[msgspec.Struct]]:
    """Every body type the routes name, once, in route order, and the ones carried inside."""
    found: dict[type[msgspec.Struct], None] = {}
    for route in routes:
        for tp in (route.request, route.response):
            if isinstance(tp, type):
                found[tp] = None
    for tp in ALSO_DECLARED:
        found[tp] = None
    return list(found)


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
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
