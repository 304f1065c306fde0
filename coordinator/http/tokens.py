"""Bearer-token authentication of the JSON API: who is asking, counted against the token's
request allowance."""

from __future__ import annotations

from aiohttp import web

from coordinator.accounts import Principal
from coordinator.errors import Unauthenticated
from coordinator.http.keys import COORDINATOR, TOKEN_LIMITS


async def principal(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send your token as 'Authorization: Bearer <token>'")
    found = await request.app[COORDINATOR].principals.for_token(token.strip())
    request.app[TOKEN_LIMITS].take(found.token_hash or found.subject_id)
    return found
