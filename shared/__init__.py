"""Suanli's trust core, shared by agents, the coordinator and auditors.

Each module has one job; use them by module (`shared.merkle.root`, `shared.money.parse_yuan`).
The errors and the few types every caller needs are also re-exported here.
"""

from shared import (
    auction,
    billing_window,
    canonical,
    checkpoint,
    clock,
    command_line,
    coordinator_urls,
    envelope,
    errors,
    gpu_models,
    http_client,
    identity,
    image_refs,
    ledger_names,
    log_entries,
    merkle,
    messages,
    money,
    note,
    receipts,
    sealing,
    settings_file,
    signed_request,
    uscc,
    websocket_client,
)
from shared.auction import AuctionError
from shared.checkpoint import Checkpoint
from shared.coordinator_urls import TransportError
from shared.envelope import Opened
from shared.errors import (
    EncodingError,
    EnvelopeError,
    KeyMaterialError,
    MoneyError,
    NoteError,
    ProofError,
    ReceiptError,
    ReceiptRuleError,
    SignatureError,
    SuanliError,
)
from shared.gpu_models import GpuModelError
from shared.http_client import (
    BadAnswer,
    CoordinatorError,
    NotConnected,
    NotLeader,
    Refused,
    Unreachable,
)
from shared.identity import PrivateKey, PublicKey, VerifierKey
from shared.log_entries import LogEntryError
from shared.messages import MessageError
from shared.receipts import Receipt, SealedReceipt
from shared.sealing import SealError
from shared.uscc import UsccError

PUBLIC_MODULES = (
    "auction",
    "billing_window",
    "canonical",
    "checkpoint",
    "clock",
    "command_line",
    "coordinator_urls",
    "envelope",
    "errors",
    "gpu_models",
    "http_client",
    "identity",
    "image_refs",
    "ledger_names",
    "log_entries",
    "merkle",
    "messages",
    "money",
    "note",
    "receipts",
    "sealing",
    "settings_file",
    "signed_request",
    "uscc",
    "websocket_client",
)

__all__ = [
    *PUBLIC_MODULES,
    "AuctionError",
    "BadAnswer",
    "Checkpoint",
    "CoordinatorError",
    "EncodingError",
    "EnvelopeError",
    "GpuModelError",
    "KeyMaterialError",
    "LogEntryError",
    "MessageError",
    "MoneyError",
    "NotConnected",
    "NotLeader",
    "NoteError",
    "Opened",
    "PrivateKey",
    "ProofError",
    "PublicKey",
    "Receipt",
    "ReceiptError",
    "ReceiptRuleError",
    "Refused",
    "SealError",
    "SealedReceipt",
    "SignatureError",
    "SuanliError",
    "TransportError",
    "Unreachable",
    "UsccError",
    "VerifierKey",
]
