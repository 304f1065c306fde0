"""Liveness, the Prometheus metrics and the OpenAPI document (built once, at make_app, from the
route table the router is built from)."""

from __future__ import annotations

from aiohttp import web

from coordinator.http.keys import COORDINATOR, METRICS, OPENAPI, ROLE, Handler
from coordinator.http.openapi import TEXT, Route
from coordinator.metrics import CONTENT_TYPE
from shared.messages import api


async def healthz(request: web.Request) -> web.Response:
    role = request.app[ROLE]
    return web.json_response(
        {
            "status": "ok",
            "time_ms": request.app[COORDINATOR].clock(),
            "role": role.name,
            "epoch": role.epoch,
            "leader": role.leader_url,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


ROUTES: list[tuple[Route, Handler]] = [
    (Route("GET", "/healthz", None, api.Health, "Liveness", "public"), healthz),
    (
        Route(
            "GET", "/metrics", None, TEXT, "Prometheus metrics (text exposition format)", "public"
        ),
        metrics,
    ),
    (Route("GET", "/v1/openapi.json", None, None, "This document", "public"), openapi),
]
