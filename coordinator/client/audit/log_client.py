"""The coordinator's public log routes, as the auditor reads them; no token is needed or sent
(but for the ledger balances an auditor's token may read). The session, TLS, timeouts, the
choice among several coordinator URLs (standbys serve the log too) and the error mapping are
`shared.http_client`'s; this module adds the routes and checks their shape."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from shared.checkpoint import Checkpoint, parse_checkpoint_body
from shared.errors import SuanliError
from shared.http_client import BadAnswer, HttpClient
from shared.note import parse_note

DEFAULT_TIMEOUT_S = 60.0


class LogClient(HttpClient):
    """The transparency log of one coordinator (at one URL, or any of a leader's and its
    standbys'): its key, checkpoints, entries and proofs."""

    def __init__(
        self,
        urls: str | Sequence[str],
        ca_file: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(urls, ca_file=ca_file, timeout_s=timeout_s, product="suanli-audit")

    async def text(self, path: str) -> str:
        raw = await self.send("GET", path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadAnswer(f"the coordinator's {path} is not UTF-8 text") from None

    async def json(self, path: str, query: dict[str, int | str]) -> dict[str, Any]:
        data = await self.request(
            "GET", path, query={name: str(value) for name, value in query.items()}
        )
        if not isinstance(data, dict):
            raise BadAnswer(f"the coordinator's {path} did not answer with a JSON object")
        return data

    async def balances(self, token: str) -> dict[str, Any]:
        """The ledger balances an auditor's token may read, with the log size they belong to."""
        path = "/v1/ledger/balances"
        data = await self.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        if (
            not isinstance(data, dict)
            or type(data.get("log_size")) is not int
            or not isinstance(data.get("accounts"), list)
        ):
            raise BadAnswer(f"the coordinator's {path} answer is malformed")
        return data

    async def checkpoint(self) -> tuple[str, Checkpoint]:
        """The latest checkpoint, parsed but NOT verified: which key must have signed it
        depends on the log_key entries of the tree it covers (`KeyChain`)."""
        note = await self.text("/v1/log/checkpoint")
        try:
            return note, parse_checkpoint_body(parse_note(note)[0])
        except SuanliError as exc:
            raise BadAnswer(
                f"the coordinator's checkpoint is not a signed note: {exc.detail}"
            ) from None

    async def key_changes(self) -> list[int]:
        answer = await self.json("/v1/log/key-changes", {})
        indices = answer.get("indices")
        if not isinstance(indices, list) or any(type(i) is not int or i < 0 for i in indices):
            raise BadAnswer("the coordinator's /v1/log/key-changes answer has no index list")
        return indices

    async def entries(self, start: int, end: int) -> list[bytes]:
        page = await self.json("/v1/log/entries", {"start": start, "end": end})
        data = page.get("entries")
        if (
            page.get("start") != start
            or not isinstance(data, list)
            or not 0 < len(data) <= end - start
        ):
            raise BadAnswer(
                f"the coordinator answered entries [{start}, {end}) with a page "
                "that does not start there or holds no entries"
            )
        return [_unbase64(item, f"entry {start + n}") for n, item in enumerate(data)]

    async def proof(self, path: str, query: dict[str, int | str]) -> list[bytes]:
        answer = await self.json(path, query)
        proof = answer.get("proof")
        if not isinstance(proof, list):
            raise BadAnswer(f"the coordinator's {path} answer has no proof list")
        return [_unbase64(item, "a proof hash") for item in proof]


def _unbase64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadAnswer(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadAnswer(f"{what} is not valid base64") from None
