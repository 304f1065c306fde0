"""The auditor's replay of billable windows: every lease's window rebuilt from the log alone
(its award, the agent's signed start report, stop requests and its end), then every accepted
receipt checked against it with `shared.billing_window.check_window`, the coordinator's rule.

Which log entry each part of the rule uses:

    window opens      lease_event `started` (at_ms; the agent's signed status report inside)
    closes by         lease_award at_ms + max_duration_ms
                      lease_event `stop_requested` at_ms + the award's stop_grace_ms
                      lease_event `ended` at_ms (exit, agent lost, overrun, ...)
    GPUs, price       lease_award gpu_uuids, price_per_gpu_hour (must match the receipt)
    acceptance time   the receipt entry's at_ms
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from shared import log_entries as L
from shared.billing_window import CLOCK_SKEW_MS, LeaseWindow, check_window
from shared.errors import ReceiptRuleError, SuanliError
from shared.identity import PublicKey
from shared.receipts import Receipt
from shared.signed_request import open_request

STATUS_PATH = "/v1/agent/status"
# a start report is checked for its signature and words; its time only against the entry's
_REPORT_WINDOW_MS = 86_400_000

Problem = Callable[[str, str, int], None]


class _Accepted(NamedTuple):
    """What the window rule needs of an accepted receipt, kept small: a log holds millions."""

    log_index: int
    accepted_at_ms: int
    lease_id: str
    seq: int
    issued_at_ms: int
    gpu_ms: int


class WindowAudit:
    """Collects the window facts and receipts while the log is read; `finish` judges them
    (a lease's window may close in an entry logged after its receipts)."""

    def __init__(self, agents: dict[str, PublicKey], problem: Problem) -> None:
        self.agents = agents
        self.problem = problem
        self.windows: dict[str, LeaseWindow] = {}
        self.events: list[tuple[int, int, L.LeaseEventEntry]] = []
        self.accepted: list[_Accepted] = []
        # the first receipt of each lease, with the terms it names (the chain keeps them)
        self.terms_of: list[tuple[int, str, tuple[str, str, int, tuple[str, ...]]]] = []

    def award(self, index: int, at_ms: int, body: L.LeaseAwardEntry) -> None:
        if body.lease_id in self.windows:
            self.problem("bad_lease", f"lease {body.lease_id} is awarded twice", index)
            return
        self.windows[body.lease_id] = LeaseWindow(body.terms(at_ms))

    def event(self, index: int, at_ms: int, body: L.LeaseEventEntry) -> None:
        self.events.append((index, at_ms, body))

    def _apply(self, index: int, at_ms: int, body: L.LeaseEventEntry) -> None:
        window = self.windows.get(body.lease_id)
        if window is None:
            self.problem(
                "bad_lease",
                f"lease {body.lease_id} has a {body.event} event but no earlier lease_award entry",
                index,
            )
            return
        if body.event == L.LEASE_STARTED:
            why = self._start_report_problem(window, at_ms, body)
            if why:
                self.problem(
                    "bad_start_report",
                    f"lease {body.lease_id}: {why}; its window stays closed",
                    index,
                )
                return
            window.open(at_ms)
        elif body.event == L.LEASE_STOP_REQUESTED:
            window.request_stop(at_ms)
        else:
            window.end(at_ms)

    def _start_report_problem(
        self, window: LeaseWindow, at_ms: int, body: L.LeaseEventEntry
    ) -> str | None:
        """Why the start is not the agent's own word, or None if it is."""
        key = self.agents.get(window.terms.agent_id)
        if body.report is None or key is None:
            return "the start is not backed by a status report signed by the lease's agent"
        try:
            signed = open_request(body.report, key, "POST", STATUS_PATH, at_ms, _REPORT_WINDOW_MS)
        except SuanliError as exc:
            return f"the start report does not verify with the agent's key: {exc.detail}"
        said = signed.body
        if (
            type(said) is not dict
            or said.get("lease_id") != body.lease_id
            or said.get("event") != "started"
        ):
            return "the signed report does not say this lease started"
        if signed.issued_at_ms > at_ms + CLOCK_SKEW_MS:
            return (
                f"the report was signed at {signed.issued_at_ms}, after the moment "
                f"({at_ms}) the log says the lease started"
            )
        return None

    def receipt(self, index: int, at_ms: int, receipt: Receipt) -> None:
        if receipt.seq == 1:
            self.terms_of.append(
                (
                    index,
                    receipt.lease_id,
                    (
                        receipt.job_id,
                        receipt.agent_id,
                        receipt.price_per_gpu_hour,
                        tuple(sorted(receipt.gpu_uuids)),
                    ),
                )
            )
        self.accepted.append(
            _Accepted(
                index, at_ms, receipt.lease_id, receipt.seq, receipt.issued_at_ms, receipt.gpu_ms
            )
        )

    def finish(self) -> None:
        for event in self.events:
            self._apply(*event)
        for index, lease_id, said in self.terms_of:
            found = self.windows.get(lease_id)
            terms = found.terms if found is not None else None
            if terms is not None and said != (
                terms.job_id,
                terms.agent_id,
                terms.price_per_gpu_hour,
                tuple(sorted(terms.gpu_uuids)),
            ):
                self.problem(
                    "lease_terms",
                    f"lease {lease_id}'s receipts name another job, agent, "
                    "price or GPUs than its award",
                    index,
                )
        for accepted in self.accepted:
            window = self.windows.get(accepted.lease_id)
            if window is None:
                self.problem(
                    "outside_billable_window",
                    f"lease {accepted.lease_id} seq "
                    f"{accepted.seq} is accepted, but no lease_award entry of the log "
                    "awards that lease",
                    accepted.log_index,
                )
                continue
            try:
                check_window(window, accepted, accepted.accepted_at_ms)
            except ReceiptRuleError as exc:
                self.problem(
                    "outside_billable_window",
                    f"lease {accepted.lease_id} seq "
                    f"{accepted.seq} was accepted though it breaks rule {exc.rule}: "
                    f"{exc.detail}",
                    accepted.log_index,
                )
        self.accepted.clear()
        self.events.clear()
