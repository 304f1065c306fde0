"""The log's public HTTP API, which auditors read: checkpoints, the key and its rotations,
entries, proofs and lookups; mounted with its background checkpoint signer by `add_routes`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from coordinator.errors import ApiError, NotFound, status_of
from coordinator.storage import Session, Store
from coordinator.tlog.checkpoints import (
    DEFAULT_CHECKPOINT_INTERVAL_S,
    checkpoint_loop,
    latest_checkpoint,
    sign_checkpoint,
)
from coordinator.tlog.keys import LogKey, default_origin, log_key_changes
from coordinator.tlog.proofs import consistency, entries, inclusion
from coordinator.tlog.store import find
from shared import log_entries
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.identity import PrivateKey

log = logging.getLogger(__name__)

_MAX_QUERY_DIGITS = 19


@dataclass(frozen=True)
class TransparencyLog:
    """What the log's handlers need: the writer, the log key (a LogKey follows rotations) and
    the log's name (a LogKey's own when it is one)."""

    database: Store
    key: PrivateKey | LogKey
    origin: str | None = None
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    clock: Callable[[], int] = now_ms

    @property
    def log_key(self) -> LogKey:
        if isinstance(self.key, LogKey):
            return self.key
        return LogKey(self.key, self.origin or default_origin(self.key))

    @property
    def verifier_key(self) -> str:
        return self.log_key.verifier_key


TLOG = web.AppKey("tlog", TransparencyLog)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _public(handler: Handler) -> Handler:
    """Render refusals here, in the API's one error shape, so the log's routes behave alike in
    the coordinator's app and in any app that mounts them."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except SuanliError as exc:
            return web.json_response(exc.as_body(), status=status_of(exc))

    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


def _query_int(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is not None:
            return default
        raise ApiError(f"query parameter {name} is required", code="missing_parameter")
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_QUERY_DIGITS:
        raise ApiError(
            f"query parameter {name} must be a whole number of at most "
            f"{_MAX_QUERY_DIGITS} digits, not {raw[:40]!r}",
            code="bad_parameter",
        )
    return int(raw)


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(value).decode() for value in values]


async def _run(request: web.Request, fn: Callable[[Session], Any]) -> Any:
    return await request.app[TLOG].database.run(fn)


@_public
async def get_checkpoint(request: web.Request) -> web.StreamResponse:
    """The latest signed checkpoint (a C2SP signed note)."""
    tlog = request.app[TLOG]
    note = await _run(request, latest_checkpoint)
    if note is None:
        note = await _run(
            request, lambda db: sign_checkpoint(db, tlog.key, tlog.origin, tlog.clock())
        )
    return web.Response(text=note, content_type="text/plain", headers={"Cache-Control": "no-store"})


@_public
async def get_key(request: web.Request) -> web.StreamResponse:
    """The log's C2SP verifier key, as it is now (after the last rotation)."""
    tlog = request.app[TLOG]
    if isinstance(tlog.key, LogKey):
        await _run(request, tlog.key.refresh)
    return web.Response(
        text=tlog.verifier_key + "\n",
        content_type="text/plain",
        headers={"Cache-Control": "no-store"},
    )


@_public
async def get_key_changes(request: web.Request) -> web.StreamResponse:
    """The indices of the log_key entries, so that a holder of one receipt can follow the log's
    key from the one it trusts to the one that signed the checkpoint."""
    indices = await _run(request, log_key_changes)
    return web.json_response({"indices": indices})


@_public
async def get_entries(request: web.Request) -> web.StreamResponse:
    start = _query_int(request, "start")
    end = _query_int(request, "end")
    page = await _run(request, lambda db: entries(db, start, end))
    return web.json_response({"start": start, "end": start + len(page), "entries": _b64(page)})


@_public
async def get_inclusion(request: web.Request) -> web.StreamResponse:
    index = _query_int(request, "index")
    tree_size = _query_int(request, "size")
    proof = await _run(request, lambda db: inclusion(db, index, tree_size))
    return web.json_response({"index": index, "size": tree_size, "proof": _b64(proof)})


@_public
async def get_consistency(request: web.Request) -> web.StreamResponse:
    old = _query_int(request, "old")
    new = _query_int(request, "new")
    proof = await _run(request, lambda db: consistency(db, old, new))
    return web.json_response({"old": old, "new": new, "proof": _b64(proof)})


def _query_hash(request: web.Request, name: str, what: str) -> bytes:
    raw = request.query[name]
    try:
        value = bytes.fromhex(raw) if raw.isascii() and raw.isalnum() else b""
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ApiError(
            f"query parameter {name} must be {what}, 64 hex digits", code="bad_parameter"
        )
    return value


@_public
async def get_find(request: web.Request) -> web.StreamResponse:
    """The index of a receipt (`digest`: SHA-256 of its envelope) or of an agent's key
    (`agent_id`), so that a holder of one receipt can prove it is logged without the whole log."""
    given = [name for name in ("digest", "agent_id") if name in request.query]
    if len(given) != 1:
        raise ApiError(
            "give exactly one of the query parameters digest and agent_id", code="missing_parameter"
        )
    if given[0] == "digest":
        key = _query_hash(request, "digest", "the SHA-256 of a receipt envelope")
        kind, what = log_entries.RECEIPT, f"receipt with digest {key.hex()}"
    else:
        key = _query_hash(request, "agent_id", "an agent id")
        kind, what = log_entries.AGENT_KEY, f"key of agent {key.hex()}"
    index = await _run(request, lambda db: find(db, kind, key))
    if index is None:
        raise NotFound(f"no {what} is in the log")
    return web.json_response({given[0]: key.hex(), "index": index, "kind": kind})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/log/checkpoint", get_checkpoint),
    ("GET", "/v1/log/key", get_key),
    ("GET", "/v1/log/key-changes", get_key_changes),
    ("GET", "/v1/log/entries", get_entries),
    ("GET", "/v1/log/proof/inclusion", get_inclusion),
    ("GET", "/v1/log/proof/consistency", get_consistency),
    ("GET", "/v1/log/find", get_find),
]


async def checkpoint_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sign checkpoints in the background while the app runs, and a last one at
    shutdown. Append it after the context that starts the database, so it stops first."""
    tlog = app[TLOG]
    task = asyncio.create_task(
        checkpoint_loop(
            tlog.database, tlog.key, tlog.origin, tlog.checkpoint_interval_s, tlog.clock
        ),
        name="log-checkpoints",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await tlog.database.run(lambda db: sign_checkpoint(db, tlog.key, tlog.origin, tlog.clock()))
    except Exception:
        log.exception("signing the last log checkpoint failed")


def add_routes(app: web.Application, tlog: TransparencyLog) -> None:
    """Mount the log's public routes and its checkpoint signer on an app."""
    app[TLOG] = tlog
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(checkpoint_ctx)
