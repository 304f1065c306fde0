"""The coordinator's HTTP service: routes, authentication and the one error shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator import billing, tlog
from coordinator.accounts import Principal
from coordinator.billing import VoucherPolicy
from coordinator.config import Settings
from coordinator.errors import (
    ApiError,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unprocessable,
    UnsupportedMediaType,
)
from coordinator.jobs import JOB_STATES
from coordinator.jobs.views import job_view
from coordinator.limits import RateLimiter
from coordinator.metrics import CONTENT_TYPE, Metrics
from coordinator.openapi import openapi_document
from coordinator.service import Coordinator
from coordinator.storage import Database
from shared import canonical, ledger_names
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.identity import PrivateKey, load_private_key, save_private_key

log = logging.getLogger(__name__)

COORDINATOR = web.AppKey("coordinator", Coordinator)
METRICS = web.AppKey("metrics", Metrics)
AGENT_LIMITS = web.AppKey("agent_limits", RateLimiter)
TOKEN_LIMITS = web.AppKey("token_limits", RateLimiter)
LOG_LIMITS = web.AppKey("log_limits", RateLimiter)
# log chunks an agent may send a second, over all its leases (they are coalesced as stored)
LOG_CHUNKS_PER_S, LOG_CHUNK_BURST = 20, 200
MSGPACK = "application/msgpack"
AGENT_PREFIX = "/v1/agent/"
# deeper than any body the API declares; Python's own parser would recurse to a RecursionError
MAX_JSON_DEPTH = 32
ADMIN_POLL_S = 0.5  # below state.ALIVE_INTERVAL_MS
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(request: web.Request, status: int, body: dict[str, str]) -> web.Response:
    if request.path.startswith(AGENT_PREFIX):
        return web.Response(status=status, body=canonical.encode(body), content_type=MSGPACK)
    return web.json_response(body, status=status)


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
        response = _error_response(request, exc.status, exc.as_body())
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except ApiError as exc:
        status = exc.status
        return _error_response(request, exc.status, exc.as_body())
    except web.HTTPRequestEntityTooLarge:
        status = 413
        limit = request.app[COORDINATOR].settings.request_body_limit_bytes
        return _error_response(
            request,
            413,
            {
                "error": "too_large",
                "detail": f"the request body is larger than the limit of {limit} bytes",
            },
        )
    except web.HTTPException as exc:
        status = exc.status
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return _error_response(request, exc.status, {"error": code, "detail": exc.reason})
    except SuanliError as exc:
        status = 422
        return _error_response(request, 422, exc.as_body())
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(
            request,
            500,
            {"error": "internal", "detail": "the coordinator failed on this request; it is logged"},
        )
    finally:
        request.app[METRICS].requests.labels(route, request.method, str(status)).observe(
            time.perf_counter() - started
        )


# -- helpers ----------------------------------------------------------------------------


async def _read_body(request: web.Request) -> bytes:
    """The whole body, or a refusal when the client sends it too slowly (half a request)."""
    timeout = request.app[COORDINATOR].settings.body_timeout_s
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise ApiError(
            f"the request body did not arrive within {timeout} s", code="body_timeout"
        ) from None


async def _msgpack_body(request: web.Request) -> bytes:
    if request.content_type != MSGPACK:
        raise UnsupportedMediaType(f"agent requests are {MSGPACK}")
    return await _read_body(request)


def _msgpack(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=canonical.encode(data), content_type=MSGPACK)


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the request body as application/json")
    raw = await _read_body(request)
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
    except ValueError:
        raise Unprocessable("the request body is not valid JSON") from None
    if body is None and raw.strip() != b"null" or _too_deep(body, MAX_JSON_DEPTH):
        raise Unprocessable(
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="too_deep"
        )
    return body


def _too_deep(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than `limit`, walked without recursion."""
    level = [value]
    for _ in range(limit + 1):
        level = [
            item
            for container in level
            if isinstance(container, (list, dict))
            for item in (container.values() if isinstance(container, dict) else container)
        ]
        if not level:
            return False
    return True


async def _principal(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send your token as 'Authorization: Bearer <token>'")
    principal = await request.app[COORDINATOR].principals.for_token(token.strip())
    request.app[TOKEN_LIMITS].take(principal.token_hash or principal.subject_id)
    return principal


def _agent_handler(
    method: Callable[[Coordinator], Callable[..., Awaitable[dict[str, Any]]]],
    limits: web.AppKey[RateLimiter] | None = None,
    signed: bool = False,
) -> Handler:
    """A handler for a signed agent request, answered by the room method that `method` picks;
    with `signed` the method also gets the request's envelope itself (a status report is
    logged as the agent signed it)."""

    async def handle(request: web.Request) -> web.Response:
        coordinator = request.app[COORDINATOR]
        body = await _msgpack_body(request)
        agent, payload = coordinator.signed_requests.authenticate(
            body, request.method, request.path
        )
        # counted after the signature: nobody can spend another agent's allowance
        request.app[AGENT_LIMITS].take(agent.agent_id)
        if limits is not None:
            request.app[limits].take(agent.agent_id)
        if signed:
            return _msgpack(await method(coordinator)(agent, payload, body))
        return _msgpack(await method(coordinator)(agent, payload))

    return handle


# -- public -----------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "time_ms": request.app[COORDINATOR].clock()})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# -- agents -----------------------------------------------------------------------------


async def enrol(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    agent = await coordinator.enrolment.enrol(await _msgpack_body(request), request.path)
    return _msgpack(
        {
            "agent_id": agent.agent_id,
            "provider_id": agent.provider_id,
            "heartbeat_interval_ms": coordinator.settings.heartbeat_interval_ms,
        },
        status=201,
    )


# -- enterprises and auditors -----------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    principal = await _principal(request)
    body = await _json_body(request)
    job, created = await coordinator.jobs.submit(
        principal, body, request.headers.get("Idempotency-Key")
    )
    return web.json_response(job_view(coordinator.state, job), status=201 if created else 200)


async def list_jobs(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    principal = await _principal(request)
    state = request.query.get("state")
    if state is not None and state not in JOB_STATES:
        raise Unprocessable(f"state must be one of {', '.join(JOB_STATES)}")
    limit = _int_query(request, "limit", 100, 1, 1000)
    jobs = coordinator.jobs.search(principal, state, limit)
    return web.json_response(
        {"jobs": [job_view(coordinator.state, j, principal.role) for j in jobs]}
    )


async def show_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    principal = await _principal(request)
    job = coordinator.jobs.find(principal, request.match_info["job_id"])
    return web.json_response(job_view(coordinator.state, job, principal.role))


async def cancel_job(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    principal = await _principal(request)
    job = await coordinator.jobs.cancel(principal, request.match_info["job_id"])
    return web.json_response(job_view(coordinator.state, job))


async def job_logs(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    principal = await _principal(request)
    if principal.role != "enterprise":
        # what a job prints is the enterprise's and its provider's, not the auditors'
        raise Forbidden("job logs are for the enterprise that posted the job")
    job = coordinator.jobs.find(principal, request.match_info["job_id"])
    offset = _int_query(request, "offset", 0, 0, 1 << 40)
    limit = _int_query(request, "limit", 256 * 1024, 1, 1 << 20)
    data, _ = await coordinator.logs.read(job.id, offset, limit)
    full_page = len(data) == limit
    if full_page:
        data = _whole_characters(data)
    return web.json_response(
        {
            "job_id": job.id,
            "offset": offset,
            "next_offset": offset + len(data),
            "data": data.decode("utf-8", errors="replace"),
            "job_state": job.state,
            "complete": job.final and not full_page,
        }
    )


def _whole_characters(data: bytes) -> bytes:
    """Cut a page of log bytes before a UTF-8 character it would split (the next page has it)."""
    for cut in range(len(data), max(0, len(data) - 4), -1):
        try:
            data[:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < cut - 3:
                return data  # invalid bytes in the log, not a split character: send as is
            continue
        return data[:cut]
    return data


async def market(request: web.Request) -> web.Response:
    await _principal(request)
    return web.json_response(request.app[COORDINATOR].state.market.summary())


async def account(request: web.Request) -> web.Response:
    principal = await _principal(request)
    coordinator = request.app[COORDINATOR]
    body: dict[str, Any] = {"role": principal.role, "id": principal.subject_id}
    if principal.role == "enterprise":
        now = coordinator.clock()
        body.update(
            await coordinator.database.run(
                lambda db: coordinator.enterprises.account(db, principal.subject_id, now)
            )
        )
    return web.json_response(body)


AUDITED_ACCOUNTS = tuple(
    ledger_names.name_pattern(kind)
    for kind in (
        ledger_names.RECEIVABLE,
        ledger_names.EARNINGS,
        ledger_names.POOL,
        ledger_names.CAP,
    )
)


async def ledger_balances(request: web.Request) -> web.Response:
    """Balances an auditor compares with the log, read in one transaction with the log's size."""
    principal = await _principal(request)
    if principal.role != "auditor":
        raise Forbidden("ledger balances are for auditors")

    def read(db: Any) -> dict[str, Any]:
        size = db.conn.execute("SELECT size FROM log_meta WHERE id = 1").fetchone()[0]
        where = " OR ".join("id LIKE ?" for _ in AUDITED_ACCOUNTS)
        rows = db.conn.execute(
            f"SELECT id, debits_posted, credits_posted FROM ledger_accounts WHERE {where} ORDER BY id",
            AUDITED_ACCOUNTS,
        ).fetchall()
        return {
            "log_size": size,
            "accounts": [
                {"id": row[0], "debits_posted": row[1], "credits_posted": row[2]} for row in rows
            ],
        }

    return web.json_response(await request.app[COORDINATOR].database.run(read))


async def voucher_pool(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    pool = await coordinator.database.run(lambda db: billing.pool_status(db, coordinator.policy))
    return web.json_response({"fiscal_year": coordinator.policy.fiscal_year, **pool})


_DECIMAL = re.compile(r"[0-9]{1,19}")


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DECIMAL.fullmatch(raw) or not low <= int(raw) <= high:
        raise Unprocessable(f"query parameter {name} must be an integer from {low} to {high}")
    return int(raw)


async def _not_found(request: web.Request) -> web.Response:
    raise NotFound(f"no route {request.method} {request.path}")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/v1/openapi.json", openapi),
    ("POST", "/v1/agent/enroll", enrol),
    ("POST", "/v1/agent/heartbeat", _agent_handler(lambda c: c.heartbeats.heartbeat)),
    ("POST", "/v1/agent/leases", _agent_handler(lambda c: c.delivery.agent_leases)),
    ("POST", "/v1/agent/status", _agent_handler(lambda c: c.reports.agent_status, signed=True)),
    ("POST", "/v1/agent/logs", _agent_handler(lambda c: c.reports.append_log, LOG_LIMITS)),
    ("POST", "/v1/agent/receipts", _agent_handler(lambda c: c.receipts.accept_receipts)),
    ("POST", "/v1/agent/rotate-key", _agent_handler(lambda c: c.enrolment.rotate_key)),
    ("POST", "/v1/jobs", submit_job),
    ("GET", "/v1/jobs", list_jobs),
    ("GET", "/v1/jobs/{job_id}", show_job),
    ("POST", "/v1/jobs/{job_id}/cancel", cancel_job),
    ("GET", "/v1/jobs/{job_id}/logs", job_logs),
    ("GET", "/v1/market", market),
    ("GET", "/v1/account", account),
    ("GET", "/v1/vouchers/pool", voucher_pool),
    ("GET", "/v1/ledger/balances", ledger_balances),
    *tlog.ROUTES,
]


async def _watch_admin(coordinator: Coordinator) -> None:
    """Apply what `suanli-coordinator admin` changed in the file (revocations, cleared flags)
    within a poll, and persist the agents' request floors that replay protection needs."""
    while True:
        await asyncio.sleep(ADMIN_POLL_S)
        try:
            await coordinator.admin.apply()
            coordinator.signed_requests.flush_request_floors()
        except Exception:
            log.exception("applying administrative changes failed")


def load_or_create_key(path: Path) -> PrivateKey:
    """The coordinator's signing key, created 0600 beside the database on first start."""
    if not path.exists():
        save_private_key(path, PrivateKey.generate())
    return load_private_key(path)


def log_key_path(db_path: str | Path) -> Path:
    """The log key's file beside the database (`admin rotate-log-key` replaces it)."""
    return Path(f"{db_path}.key")


def make_app(
    settings: Settings,
    db_path: str,
    clock: Callable[[], int] = now_ms,
    policy: VoucherPolicy | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_metrics], client_max_size=settings.request_body_limit_bytes
    )
    database = Database(db_path)
    # what is deleted (secret env values at a job's end) is overwritten, not left in free pages
    database.db.conn.execute("PRAGMA secure_delete = ON")
    log_key = tlog.LogKey.load(database.db, log_key_path(db_path))
    coordinator = Coordinator(settings, database, log_key, clock, policy)
    app[COORDINATOR] = coordinator
    app[METRICS] = Metrics(
        coordinator.state,
        coordinator.scheduler.counters,
        lambda: coordinator.receipt_store.rejections_dropped,
    )
    app[AGENT_LIMITS] = RateLimiter(
        settings.agent_requests_per_s, settings.agent_request_burst, "this agent"
    )
    app[LOG_LIMITS] = RateLimiter(LOG_CHUNKS_PER_S, LOG_CHUNK_BURST, "this agent's log shipping")
    app[TOKEN_LIMITS] = RateLimiter(
        settings.token_requests_per_s, settings.token_request_burst, "this token"
    )
    app[tlog.TLOG] = tlog.TransparencyLog(database, log_key, clock=clock)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)

    scheduler: list[asyncio.Task[None]] = []

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        database.start()
        scheduler.append(asyncio.create_task(coordinator.run_scheduler(), name="scheduler"))
        scheduler.append(asyncio.create_task(_watch_admin(coordinator), name="admin-watch"))
        yield
        await stop_scheduler(app)
        coordinator.signed_requests.flush_request_floors(stopping=True)
        database.close()
        coordinator.close()

    async def stop_scheduler(app: web.Application) -> None:
        # from the moment the service stops answering, nobody's silence may count against them
        coordinator.signals.close_long_polls()
        for task in scheduler:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        scheduler.clear()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(tlog.checkpoint_ctx)  # after lifecycle: it stops before the database
    app.on_shutdown.append(stop_scheduler)
    return app
