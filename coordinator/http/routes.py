"""The one route table, (declaration, handler) per operation, from which both the router and
/v1/openapi.json are built so that the two cannot drift. The transparency log's handlers live
in coordinator.tlog.routes; their declarations are here, matched to them by method and path."""

from __future__ import annotations

from coordinator import tlog
from coordinator.http import agents, health, jobs, money
from coordinator.http.keys import Handler
from coordinator.http.openapi import TEXT, Route
from shared.messages import log

LOG_DECLARATIONS: tuple[Route, ...] = (
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


def _log_routes() -> list[tuple[Route, Handler]]:
    handlers = {(method, path): handler for method, path, handler in tlog.ROUTES}
    declared = {(route.method, route.path) for route in LOG_DECLARATIONS}
    if declared != set(handlers):
        raise RuntimeError(
            f"the log's routes and their declarations differ: {declared ^ set(handlers)}"
        )
    return [(route, handlers[route.method, route.path]) for route in LOG_DECLARATIONS]


ROUTES: list[tuple[Route, Handler]] = [
    *health.ROUTES,
    *agents.ROUTES,
    *jobs.ROUTES,
    *money.ROUTES,
    *_log_routes(),
]
DECLARATIONS: tuple[Route, ...] = tuple(route for route, _ in ROUTES)
