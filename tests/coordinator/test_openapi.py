"""The OpenAPI document is generated: every served route is in it, and its schemas are exactly
what msgspec derives from the declared message types (none is written by hand)."""

from __future__ import annotations

import json
import re
import typing

import msgspec

from coordinator.http.openapi import REF, Route, declared_types, openapi_document
from coordinator.http.routes import DECLARATIONS
from coordinator.http.routes import ROUTES as SERVED
from coordinator.jobs import JOB_STATES
from shared.messages import api
from shared.messages.fields import Message


def test_every_served_route_is_documented_and_nothing_else() -> None:
    served = {(route.method, route.path) for route, _ in SERVED}
    documented = {(route.method, route.path) for route in DECLARATIONS}
    assert served == documented
    document = openapi_document(DECLARATIONS)
    in_document = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert in_document == served


def test_component_schemas_are_msgspecs_own() -> None:
    document = openapi_document(DECLARATIONS)
    _, expected = msgspec.json.schema_components(declared_types(DECLARATIONS), ref_template=REF)
    assert document["components"]["schemas"] == expected
    # every declared body is in the document, and every reference resolves
    declared = {cls.__name__ for cls in _all_messages()}
    assert declared - set(expected) <= {
        "JobListQuery",
        "JobLogQuery",
        "EntriesQuery",
        "InclusionQuery",
        "ConsistencyQuery",
        "FindQuery",
    }
    text = json.dumps(document)
    for name in set(re.findall(r'"#/components/schemas/(\w+)"', text)):
        assert name in expected, name


def _all_messages() -> list[type[Message]]:
    found, todo = [], list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_query_parameters_come_from_the_query_types() -> None:
    document = openapi_document(DECLARATIONS)
    listing = {p["name"]: p for p in document["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert listing["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    assert listing["state"]["schema"]["anyOf"][0] == {"enum": sorted(JOB_STATES)}
    entries = document["paths"]["/v1/log/entries"]["get"]["parameters"]
    assert [(p["name"], p["required"]) for p in entries] == [("start", True), ("end", True)]
    logs = document["paths"]["/v1/jobs/{job_id}/logs"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in logs] == [
        ("job_id", "path"),
        ("offset", "query"),
        ("limit", "query"),
    ]


def test_the_job_states_are_the_coordinators() -> None:
    assert typing.get_args(api.JobState) == JOB_STATES


def test_a_route_table_can_be_handed_in() -> None:
    """Any table of declarations makes its own document (the app passes its route table's)."""
    routes = [Route("GET", "/v1/market", None, api.Market, "the market")]
    document = openapi_document(routes)
    assert list(document["paths"]) == ["/v1/market"]
    assert set(document["components"]["schemas"]) >= {"Market", "MarketModel", "ErrorBody"}
    get = document["paths"]["/v1/market"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Market"
    }
    assert get["security"] == [{"bearer": []}]


def test_agent_routes_document_the_signed_body_and_msgpack_answers() -> None:
    document = openapi_document(DECLARATIONS)
    heartbeat = document["paths"]["/v1/agent/heartbeat"]["post"]
    schema = heartbeat["requestBody"]["content"]["application/msgpack"]["schema"]
    assert schema["format"] == "binary"
    assert schema["x-suanli-body"] == {"$ref": "#/components/schemas/Heartbeat"}
    answer = heartbeat["responses"]["200"]["content"]["application/msgpack"]["schema"]
    assert answer == {"$ref": "#/components/schemas/HeartbeatAnswer"}
    error = heartbeat["responses"]["422"]["content"]["application/msgpack"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert document["paths"]["/v1/agent/enroll"]["post"]["responses"]["201"]


def test_the_document_is_served_unchanged_by_callers() -> None:
    first = openapi_document(DECLARATIONS)
    first["paths"].clear()
    assert openapi_document(DECLARATIONS)["paths"]
