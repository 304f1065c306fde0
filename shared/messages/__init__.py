"""Every body that crosses a process boundary, declared once: the agent protocol
(`agent_protocol`), the JSON API (`api`), the transparency log's routes (`log`) and the one
error body; `decode_json`, `decode_msgpack`, `decode_query` and `convert` are the door they pass."""

from shared.messages import agent_protocol, api, log
from shared.messages.door import convert, decode_json, decode_msgpack, decode_query
from shared.messages.error import ErrorBody, MessageError

__all__ = [
    "ErrorBody",
    "MessageError",
    "agent_protocol",
    "api",
    "convert",
    "decode_json",
    "decode_msgpack",
    "decode_query",
    "log",
]
