"""`suanli-coordinator`: serve the market and administer its database.

`serve` runs the service; `admin` tasks are grouped by what they administer: `accounts`
(providers, enterprises, auditors and their tokens), `billing` (the ledger, periods,
payments), `agents` (agent keys and capacity flags) and `log_key` (the log's signing key).
"""

from coordinator.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
