"""What the handlers find on the app: its keys, and the shape of a handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator.limits import RateLimiter
from coordinator.metrics import Metrics
from coordinator.role import Role
from coordinator.service import Coordinator

COORDINATOR = web.AppKey("coordinator", Coordinator)
METRICS = web.AppKey("metrics", Metrics)
AGENT_LIMITS = web.AppKey("agent_limits", RateLimiter)
TOKEN_LIMITS = web.AppKey("token_limits", RateLimiter)
LOG_LIMITS = web.AppKey("log_limits", RateLimiter)
OPENAPI = web.AppKey("openapi", dict[str, Any])
ROLE = web.AppKey("role", Role)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
