"""`suanli audit`: re-verify the coordinator's transparency log, trusting only `shared/`, the
log's key and the agent keys the log itself registered.

`verify_log` downloads the whole log, checks it against a signed checkpoint and against the
checkpoint the previous run saved (a rewritten history is caught there), then re-verifies every
receipt (signature, chain, postings against what its lease added), replays every auction round
and totals the postings. `replay_auctions` does the auctions alone; `check_receipt` proves one
receipt is in the log. Each returns a report whose `discrepancies` name what failed; the CLI
prints it and exits non-zero when there is any. Only `shared/`, aiohttp and rich are imported.

The rooms: `log_client` (the log's HTTP routes), `state` (the saved checkpoint and pinned key),
`key_chain` (which log key signs what), `verify` (the whole log), `entries`, `auctions` and
`windows` (the rules re-run over it), `receipt` (one receipt's proof), `reports` and `render`
(what was found), `commands` (the argparse wiring and `main`).
"""

from coordinator.client.audit.commands import (
    EXIT_DISCREPANCY,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    add_commands,
    main,
)
from coordinator.client.audit.errors import AuditError, AuditUsageError
from coordinator.client.audit.key_chain import KeyChain
from coordinator.client.audit.log_client import LogClient
from coordinator.client.audit.receipt import check_receipt
from coordinator.client.audit.render import render_report
from coordinator.client.audit.reports import AuditReport, Discrepancy, ReceiptReport
from coordinator.client.audit.state import load_state, save_state
from coordinator.client.audit.verify import compare_balances, replay_auctions, verify_log

__all__ = [
    "EXIT_DISCREPANCY",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "AuditError",
    "AuditReport",
    "AuditUsageError",
    "Discrepancy",
    "KeyChain",
    "LogClient",
    "ReceiptReport",
    "add_commands",
    "check_receipt",
    "compare_balances",
    "load_state",
    "main",
    "render_report",
    "replay_auctions",
    "save_state",
    "verify_log",
]
