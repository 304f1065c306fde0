"""A WebSocket to the coordinator opened through an `HttpClient`: the URL now in use, the
client's own headers (its token or its product) and TLS, and failures mapped as its requests'
are. A refused upgrade raises aiohttp.WSServerHandshakeError; asking the same path as a plain
request says why in the coordinator's words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp

from shared.http_client import HttpClient, NotConnected, Unreachable


async def open_websocket(
    client: HttpClient,
    path: str,
    query: Mapping[str, str | Sequence[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    max_msg_size: int = 1 << 20,
) -> aiohttp.ClientWebSocketResponse:
    params = [
        (name, item)
        for name, value in (query or {}).items()
        for item in ([value] if isinstance(value, str) else value)
    ]
    try:
        return await client._http().ws_connect(
            client.url + path,
            params=params,
            headers={**client._headers, **(headers or {})},
            ssl=client._tls,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            max_msg_size=max_msg_size,
            heartbeat=20.0,
        )
    except aiohttp.WSServerHandshakeError:
        raise
    except aiohttp.ClientConnectorError as exc:
        raise NotConnected(f"cannot reach the coordinator at {client.url} ({exc})") from None
    except aiohttp.ClientError as exc:
        raise Unreachable(
            f"lost the connection to the coordinator at {client.url} ({exc})"
        ) from None
