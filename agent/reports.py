"""Telling the coordinator how each lease goes: started, failed, exited, in that order, each
once; a lease whose end is reported and whose runner is done leaves the daemon's care."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.backoff import Backoff
from agent.coordinator_client import CoordinatorClient
from agent.lease import LeaseRecord
from agent.metering import learn_window
from agent.runner import LeaseRunner
from agent.spool import Spool
from shared.clock import now_ms
from shared.http_client import CoordinatorError

log = logging.getLogger(__name__)
IDLE_ROUND_S = 5.0


class StatusReports:
    def __init__(
        self,
        client: CoordinatorClient,
        spool: Spool,
        save: Callable[[LeaseRecord], Awaitable[None]],
    ) -> None:
        self.client = client
        self.spool = spool
        self._save = save
        self._due = asyncio.Event()

    def kick(self) -> None:
        """Report now rather than at the next idle round."""
        self._due.set()

    async def loop(self, runners: dict[str, LeaseRunner]) -> None:
        backoff = Backoff()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=IDLE_ROUND_S)
            self._due.clear()
            try:
                await self.send(runners)
                backoff.reset()
            except CoordinatorError as exc:
                log.warning("status report failed: %s", exc.detail)
                await backoff.wait()
                self._due.set()

    async def send(self, runners: dict[str, LeaseRunner]) -> None:
        for runner in list(runners.values()):
            record = runner.record
            reporting, container = record.reporting, record.container
            before = reporting.status
            failure = container.failure
            if failure is not None:
                if before != "failed":
                    await self._report(
                        record, "failed", reason_code=failure.reason_code, reason=failure.reason
                    )
                    reporting.status = "failed"
            else:
                if container.started_at_ms is not None and reporting.status == "":
                    answer = await self._report(record, "started")
                    window = (answer or {}).get("window")
                    if type(window) is dict and window.get("opened_at_ms") is not None:
                        record.metering.billable_from_ms = now_ms()
                        learn_window(record, window)
                    else:
                        record.metering.billable_from_ms = None  # refused, or ended meanwhile
                    reporting.status = "started"
                if (
                    record.chain.final_sealed
                    and reporting.status == "started"
                    and not await asyncio.to_thread(self.spool.unanswered, record.lease_id)
                ):
                    # the exit is reported once the final receipt is answered: the job's
                    # reservation is released at its end and must still pay that receipt
                    why = container.stop_reason
                    await self._report(
                        record,
                        "exited",
                        exit_code=container.exit_code,
                        **({"reason": why} if why else {}),
                    )
                    reporting.status = "exited"
            if reporting.status != before:
                await self._save(record)
        for lease_id, runner in list(runners.items()):
            record = runner.record
            if (
                record.reporting.status in ("exited", "failed")
                and runner.task is not None
                and runner.task.done()
            ):
                record.reporting.done = True
                await self._save(record)
                del runners[lease_id]

    async def _report(
        self, record: LeaseRecord, event: str, **fields: Any
    ) -> dict[str, Any] | None:
        try:
            return await self.client.status(record.lease_id, event, **fields)
        except CoordinatorError as exc:
            if exc.status in (404, 422):
                log.error(
                    "the coordinator refused the %s report of %s: %s",
                    event,
                    record.lease_id,
                    exc.detail,
                )
                return None
            raise
