"""The billable window of a lease: the only time its receipts may bill, from facts in the log.

The window opens when the agent reports the container started (never before the award) and
closes at the earliest of: the award plus the job's maximum duration, a stop request (cancel,
revocation) plus the stop grace, and the lease's end (the container's exit, the agent lost,
the coordinator ending an overrun). A receipt may bill at most

    (min(issued time, acceptance time, window close) − window open) × leased GPUs

GPU-milliseconds: clock skew may excuse a receipt issued a little after its acceptance, never
add billable time; a receipt issued further ahead is refused; a lease never started bills
nothing. The coordinator checks each receipt with this module when it accepts it, and the
auditor checks every accepted receipt again from the log's award, lease events and receipt
entries, with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.errors import ReceiptRuleError
from shared.receipts import Rule

__all__ = ["CLOCK_SKEW_MS", "Billed", "LeaseTerms", "LeaseWindow", "check_window"]

# how far a receipt's issued time may lie after its acceptance (hosts' clocks drift)
CLOCK_SKEW_MS = 30_000


@dataclass(frozen=True)
class LeaseTerms:
    """What the award fixed: who serves which job on which GPUs, at what price, for how long."""

    lease_id: str
    job_id: str
    agent_id: str
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int
    awarded_at_ms: int
    max_duration_ms: int
    stop_grace_ms: int

    @property
    def ends_at_ms(self) -> int:
        """The latest the window can close: the award plus the job's maximum duration."""
        return self.awarded_at_ms + self.max_duration_ms


@dataclass
class LeaseWindow:
    """A lease's terms and the events that open and close its window, as they become known."""

    terms: LeaseTerms
    opened_at_ms: int | None = None
    stop_requested_at_ms: int | None = None
    ended_at_ms: int | None = None

    def open(self, at_ms: int) -> None:
        """The agent reported the container started; a start before the award counts from it."""
        if self.opened_at_ms is None:
            self.opened_at_ms = max(at_ms, self.terms.awarded_at_ms)

    def request_stop(self, at_ms: int) -> None:
        if self.stop_requested_at_ms is None or at_ms < self.stop_requested_at_ms:
            self.stop_requested_at_ms = at_ms

    def end(self, at_ms: int) -> None:
        if self.ended_at_ms is None or at_ms < self.ended_at_ms:
            self.ended_at_ms = at_ms

    @property
    def closes_at_ms(self) -> int:
        """The earliest of the lease's end by duration, its stop request plus grace, its end."""
        close = self.terms.ends_at_ms
        if self.stop_requested_at_ms is not None:
            close = min(close, self.stop_requested_at_ms + self.terms.stop_grace_ms)
        if self.ended_at_ms is not None:
            close = min(close, self.ended_at_ms)
        return close

    def billable_gpu_ms(self, issued_at_ms: int, accepted_at_ms: int) -> int:
        """The most GPU time a receipt issued and accepted at these moments may claim."""
        if self.opened_at_ms is None:
            return 0
        until = min(issued_at_ms, accepted_at_ms, self.closes_at_ms)
        return max(0, until - self.opened_at_ms) * len(self.terms.gpu_uuids)


class Billed(Protocol):
    """What the rule reads of a receipt (a `shared.receipts.Receipt` has it)."""

    @property
    def issued_at_ms(self) -> int: ...

    @property
    def gpu_ms(self) -> int: ...


def check_window(window: LeaseWindow, receipt: Billed, accepted_at_ms: int) -> None:
    """Raise ReceiptRuleError unless the receipt bills only inside the lease's window."""
    if receipt.issued_at_ms > accepted_at_ms + CLOCK_SKEW_MS:
        raise ReceiptRuleError(
            Rule.TIME_WINDOW,
            f"the receipt is issued {receipt.issued_at_ms - accepted_at_ms} ms after the moment it "
            f"arrived; at most {CLOCK_SKEW_MS} ms of clock skew is allowed",
        )
    if window.opened_at_ms is None:
        raise ReceiptRuleError(
            Rule.NOT_STARTED,
            f"lease {window.terms.lease_id} was never reported started, so it bills nothing",
        )
    limit = window.billable_gpu_ms(receipt.issued_at_ms, accepted_at_ms)
    if receipt.gpu_ms > limit:
        until = min(receipt.issued_at_ms, accepted_at_ms, window.closes_at_ms)
        raise ReceiptRuleError(
            Rule.BILLABLE_WINDOW,
            f"{receipt.gpu_ms} GPU-ms is more than the {limit} GPU-ms of lease "
            f"{window.terms.lease_id}'s billable window ({len(window.terms.gpu_uuids)} GPUs × "
            f"{max(0, until - window.opened_at_ms)} ms from its start at {window.opened_at_ms} to "
            f"{until})",
        )
