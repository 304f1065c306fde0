"""Who the log knows: agents' keys, enterprises, and the voucher policy in force.

agent_key      [agent_id, public_key (32 bytes), provider_id, provider_uscc]
enterprise     [enterprise_id, uscc]
voucher_policy {setting: int | str | bool | None, ...}
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.errors import SuanliError
from shared.identity import PUBLIC_KEY_SIZE, PublicKey
from shared.log_entries.fields import array, text
from shared.log_entries.kinds import LogEntryError

MAX_POLICY_SETTINGS = 256


class AgentKey(NamedTuple):
    """An agent's enrolled key: the log's own record of which key may sign whose receipts."""

    agent_id: str
    public_key: bytes
    provider_id: str
    provider_uscc: str

    def to_wire(self) -> list[Any]:
        return list(self)


class EnterpriseEntry(NamedTuple):
    enterprise_id: str
    uscc: str

    def to_wire(self) -> list[Any]:
        return list(self)


def parse_agent_key(body: Any) -> AgentKey:
    agent_id, public_key, provider_id, provider_uscc = array(body, 4, "an agent_key body")
    text(agent_id, "agent_id")
    if type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_SIZE:
        raise LogEntryError(f"an agent's public key is {PUBLIC_KEY_SIZE} bytes")
    text(provider_id, "provider_id")
    text(provider_uscc, "provider_uscc")
    try:
        derived = PublicKey(public_key).agent_id
    except SuanliError as exc:
        raise LogEntryError(f"agent {agent_id}: {exc.detail}") from None
    if derived != agent_id:
        raise LogEntryError(f"agent_id {agent_id} is not the SHA-256 of its public key")
    return AgentKey(agent_id, public_key, provider_id, provider_uscc)


def parse_enterprise(body: Any) -> EnterpriseEntry:
    enterprise_id, uscc = array(body, 2, "an enterprise body")
    return EnterpriseEntry(text(enterprise_id, "enterprise_id"), text(uscc, "uscc"))


def parse_voucher_policy(body: Any) -> dict[str, Any]:
    if type(body) is not dict or len(body) > MAX_POLICY_SETTINGS:
        raise LogEntryError(
            f"a voucher_policy body is a map of at most {MAX_POLICY_SETTINGS} settings"
        )
    for name, setting in body.items():
        text(name, "a voucher policy setting's name")
        if setting is not None and type(setting) not in (int, str, bool):
            raise LogEntryError(
                f"voucher policy setting {name} must be an integer, text, a boolean or nil"
            )
    return dict(body)
