"""Reading request bodies: within the body timeout and the size limit (aiohttp's
client_max_size), in the content type the route family speaks; and msgpack answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web

from coordinator.errors import ApiError, Unprocessable, UnsupportedMediaType
from coordinator.http.errors import MSGPACK
from coordinator.http.keys import COORDINATOR
from shared import canonical
from shared.messages import MessageError, decode_json

T = TypeVar("T")

JSON = "application/json"
# deeper than any body the API declares; Python's own parser would recurse to a RecursionError
MAX_JSON_DEPTH = 32


async def read_body(request: web.Request) -> bytes:
    """The whole body, or a refusal when the client sends it too slowly (half a request)."""
    if request.content.is_eof():  # all of it has arrived: nothing to wait for, no timer
        return await request.read()
    timeout = request.app[COORDINATOR].settings.body_timeout_s
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise ApiError(
            f"the request body did not arrive within {timeout} s", code="body_timeout"
        ) from None


async def msgpack_body(request: web.Request) -> bytes:
    """An agent request's bytes, as received (a signature covers them: never re-encoded)."""
    if request.content_type != MSGPACK:
        raise UnsupportedMediaType(f"agent requests are {MSGPACK}")
    return await read_body(request)


def msgpack_answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=canonical.encode(data), content_type=MSGPACK)


async def json_body(request: web.Request) -> bytes:
    """A JSON body's bytes, for its declared type's decoder."""
    if request.content_type != JSON:
        raise UnsupportedMediaType("send the request body as application/json")
    return await read_body(request)


def decode_json_body(type_: type[T], raw: bytes, *, code: str) -> T:
    """`raw` as `type_`. No declared body nests anywhere near MAX_JSON_DEPTH, so only a refused
    body is measured: one that nests deeper is refused as too_deep, whatever else is wrong."""
    try:
        return decode_json(type_, raw, code=code)
    except MessageError:
        _refuse_if_too_deep(raw)
        raise


def _refuse_if_too_deep(raw: bytes) -> None:
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
    except ValueError:
        return  # not JSON: the decoder's refusal says so
    if body is None and raw.strip() != b"null" or _too_deep(body, MAX_JSON_DEPTH):
        raise Unprocessable(
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="too_deep"
        )


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
