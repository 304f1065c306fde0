"""Why an audit could not run, as opposed to what it found (the reports' discrepancies)."""

from __future__ import annotations

from shared.errors import SuanliError


class AuditError(SuanliError):
    """The audit could not run: the coordinator's answers or the inputs do not allow it."""

    code = "audit_failed"


class AuditUsageError(AuditError):
    """The command line, the state file or a given key is wrong; nothing was concluded."""

    code = "audit_usage"


class Stop(Exception):
    """Nothing more can be checked (no verifiable checkpoint); the report says why."""
