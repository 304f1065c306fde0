"""The one error mapping: every refusal leaves as an ErrorBody ({"error", "detail"}), in JSON or
for agent routes in msgpack, and every request is counted in the metrics by route and status."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from coordinator.errors import NotLeader, TooManyRequests, status_of
from coordinator.http.keys import COORDINATOR, METRICS, Handler
from shared import canonical
from shared.errors import SuanliError
from shared.messages import ErrorBody

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
AGENT_PREFIX = "/v1/agent/"


def error_response(
    request: web.Request, status: int, body: ErrorBody, **extra: str | None
) -> web.Response:
    """The error body in the media type of the route's family."""
    fields: dict[str, str | None] = {"error": body.error, "detail": body.detail, **extra}
    if request.path.startswith(AGENT_PREFIX):
        return web.Response(status=status, body=canonical.encode(fields), content_type=MSGPACK)
    return web.json_response(fields, status=status)


def not_leader_response(request: web.Request, exc: NotLeader) -> web.Response:
    """307 to the same path at the leader, when it is known; else 503, to be asked again."""
    response = error_response(request, 307 if exc.leader else 503, _body(exc), leader=exc.leader)
    if exc.leader:
        response.headers["Location"] = exc.leader.rstrip("/") + str(request.rel_url)
    else:
        response.headers["Retry-After"] = "1"
    return response


def _body(exc: SuanliError) -> ErrorBody:
    return ErrorBody(error=exc.code, detail=exc.detail)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except TooManyRequests as exc:
        status = exc.status
        response = error_response(request, exc.status, _body(exc))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except NotLeader as exc:
        response = not_leader_response(request, exc)
        status = response.status
        return response
    except web.HTTPRequestEntityTooLarge:
        status = 413
        limit = request.app[COORDINATOR].settings.request_body_limit_bytes
        detail = f"the request body is larger than the limit of {limit} bytes"
        return error_response(request, 413, ErrorBody(error="too_large", detail=detail))
    except web.HTTPException as exc:
        status = exc.status
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return error_response(request, exc.status, ErrorBody(error=code, detail=exc.reason))
    except SuanliError as exc:
        status = status_of(exc)
        return error_response(request, status, _body(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        detail = "the coordinator failed on this request; it is logged"
        return error_response(request, 500, ErrorBody(error="internal", detail=detail))
    finally:
        request.app[METRICS].requests.labels(route, request.method, str(status)).observe(
            time.perf_counter() - started
        )
