"""The typed errors of the trust core: each carries a stable code and one sentence for people."""

from __future__ import annotations


class SuanliError(Exception):
    """Base of every error Suanli raises on purpose; `code` is stable, the message is a sentence."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def as_body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class EncodingError(SuanliError):
    """Bytes are not the one canonical msgpack encoding Suanli accepts."""

    code = "bad_encoding"


class EnvelopeError(SuanliError):
    """An envelope is malformed, of the wrong kind, or too large."""

    code = "bad_envelope"


class SignatureError(EnvelopeError):
    """A signature does not verify for the expected key and kind."""

    code = "bad_signature"


class KeyMaterialError(SuanliError):
    """A key, key file or verifier key is malformed or unsafe."""

    code = "bad_key"


class MoneyError(SuanliError):
    """A money amount is not a plain decimal yuan value within the allowed range."""

    code = "bad_amount"


class ReceiptError(SuanliError):
    """A receipt payload is malformed."""

    code = "bad_receipt"


class ReceiptRuleError(ReceiptError):
    """A well-formed receipt breaks a named acceptance rule."""

    code = "receipt_rejected"

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule

    def as_body(self) -> dict[str, str]:
        return {"error": self.code, "rule": self.rule, "detail": self.detail}


class ProofError(SuanliError):
    """A Merkle proof or tree request is malformed or out of range."""

    code = "bad_proof"


class NoteError(SuanliError):
    """A signed note or checkpoint is malformed or its signature does not verify."""

    code = "bad_note"
