"""A quote before spending: what a job would meet if it were posted now, worked out by the
scheduler's own auction and the billing's own reservation, with nothing stored, reserved or
logged.

The auction is sealed-bid, and a quote is an auction nobody pays for, so it is bounded so as
to tell a rogue enterprise little more than `GET /v1/market` and a real submission do:

- The price is an agent's ask whenever it is not the job's own max price (the second-lowest
  eligible ask). A quote tells it only as the second-lowest ask of the agents that fit,
  rounded up to two significant figures (¥4.123456 as at most ¥4.20), or the max price if
  lower; it says "exactly" only where that follows from those two figures alone. Sweeping the
  max price then finds the rounded figure and nothing finer (tests/coordinator/
  test_quote_bound.py): telling exact from at-most by the auction's own price would find the
  ask itself, where the answer flips.
- The agents and GPUs shown are those whose free GPUs fit the job, whatever they ask: a count
  of offers at or below the max price would, swept over max prices, map every ask exactly.
- Whether the job would run now is told for its max price rounded down to two significant
  figures (¥4.19 asks as ¥4.10), so a sweep of max prices finds the lowest ask of the agents
  that fit only to that grid, however narrowly the job's needs single one agent out; an
  honest enterprise whose max price is within the grid step of that ask is told it may wait
  when a real submission would run, and the answer says so. Quotes also have their own, hard,
  per-enterprise limit (`quote_requests_per_minute`).
- An enterprise that could not post the job (suspended, out of credit) is told that, and
  nothing of the auction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from coordinator import accounts, billing
from coordinator.accounts import Principal
from coordinator.config import Settings
from coordinator.errors import Forbidden, Unprocessable
from coordinator.jobs.model import Job
from coordinator.jobs.spec import JobRequest, parse_job_request
from coordinator.limits import RateLimiter
from coordinator.scheduler import _job_spec as job_spec
from coordinator.state import State
from coordinator.storage import Database, Session
from shared.auction import eligible_offers, run_auction
from shared.auction.rule import _qualifies as qualifies
from shared.auction.values import INT_MAX, GpuOffer
from shared.errors import SuanliError
from shared.gpu_models import expand_model_filter
from shared.messages import api
from shared.money import format_money

SIGNIFICANT_FIGURES = 2


def rounded_up(micro_yuan: int, figures: int = SIGNIFICANT_FIGURES) -> int:
    """`micro_yuan` rounded up to `figures` significant figures (12_340_000 → 13_000_000)."""
    step: int = 10 ** max(0, len(str(micro_yuan)) - figures)
    return -(-micro_yuan // step) * step


def rounded_down(micro_yuan: int, figures: int = SIGNIFICANT_FIGURES) -> int:
    """`micro_yuan` rounded down to `figures` significant figures (4_190_000 → 4_100_000)."""
    step: int = 10 ** max(0, len(str(micro_yuan)) - figures)
    return micro_yuan // step * step


def _below(ceiling: int) -> int:
    """The largest amount `rounded_up` takes below `ceiling` (its grid's previous point)."""
    step: int = 10 ** max(0, len(str(ceiling - 1)) - SIGNIFICANT_FIGURES)
    return ceiling - step


def quoted_price(second_ask: int | None, max_price: int) -> tuple[int, bool]:
    """(the price, or a ceiling on it; whether exact) told for a job that would run, from its
    max price and the second-lowest ask of the agents that fit it (None: only one fits) rounded
    up, and from nothing finer. The auction's price is min(second ask, max price)."""
    if second_ask is None:
        return max_price, True
    ceiling = rounded_up(second_ask)
    if max_price <= _below(ceiling):  # every ask rounding up to `ceiling` is above it
        return max_price, True
    return min(ceiling, max_price), False


class _Rehearsed(Exception):
    """Carries a reservation out of the writer's call, whose savepoint it rolls back."""

    def __init__(self, reservation: billing.Reservation) -> None:
        super().__init__("rehearsed")
        self.reservation = reservation


class Quotes:
    """Answers POST /v1/jobs/quote for enterprises, at most so often each."""

    def __init__(
        self,
        state: State,
        database: Database,
        policy: billing.VoucherPolicy,
        settings: Settings,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.policy = policy
        self.clock = clock
        self.half_life_ms = settings.reliability_half_life_ms
        self.limits = RateLimiter(
            settings.quote_requests_per_minute / 60,
            settings.quote_request_burst,
            "this enterprise's quotes",
        )

    def require_quoter(self, principal: Principal) -> None:
        """Refuse anyone but an enterprise, and an enterprise past its quotes' rate (checked
        before the body is read)."""
        _enterprise_only(principal)
        self.limits.take(principal.subject_id)

    async def quote(self, principal: Principal, body: api.JobSubmit) -> dict[str, Any]:
        """The quote's answer (`shared.messages.quote.JobQuote`), for a caller that passed
        `require_quoter`."""
        _enterprise_only(principal)
        request = parse_job_request(body)
        if request.gpu_models:
            try:
                models = expand_model_filter(request.gpu_models)
            except SuanliError as exc:
                raise Unprocessable(exc.detail, code="invalid_job") from None
            request = dataclasses.replace(request, gpu_models=models)
        now = self.clock()
        job = Job(accounts.new_id("quote"), principal.subject_id, "quote", request, now)
        reservation = await self._reservation(job, now)
        if reservation["refused"] is not None:
            return {**_NOTHING_OF_THE_AUCTION, **reservation}
        return {**self._auction(job, now), **reservation}

    def _auction(self, job: Job, now: int) -> dict[str, Any]:
        """The scheduler's auction on the book as it is now, awarding nothing."""
        spec = job_spec(job)
        market = self.state.market
        on_the_grid = rounded_down(spec.max_price_per_gpu_hour)
        asked = dataclasses.replace(spec, max_price_per_gpu_hour=on_the_grid)
        outcome = run_auction(asked, market.candidates(asked, now))
        offering = [
            market.offer_of(agent, now)
            for agent in market.agents.values()
            if agent.online and not agent.revoked and agent.ask_per_gpu_hour is not None
        ]
        at_any_price = dataclasses.replace(spec, max_price_per_gpu_hour=INT_MAX)
        fitting = eligible_offers(at_any_price, offering)
        by_model: dict[str, dict[str, int]] = {}
        gpus = 0
        for offer in fitting:
            for model in sorted({g.model for g in _fitting_gpus(job.request, offer.free_gpus)}):
                by_model.setdefault(model, {"agents": 0, "gpus": 0})["agents"] += 1
            for gpu in _fitting_gpus(job.request, offer.free_gpus):
                by_model[gpu.model]["gpus"] += 1
                gpus += 1
        price: int | None = None
        exact = False
        if outcome.winner is not None:
            second = fitting[1].ask_per_gpu_hour if len(fitting) > 1 else None
            price, exact = quoted_price(second, spec.max_price_per_gpu_hour)
        detail = outcome.reason_detail if outcome.winner is None else None
        if detail is not None and on_the_grid != spec.max_price_per_gpu_hour:
            detail += (
                f" (a quote asks at {format_money(on_the_grid)}, your max price rounded down to "
                f"{SIGNIFICANT_FIGURES} figures; a real submission may still run)"
            )
        return {
            "runs_now": outcome.winner is not None,
            "reason": outcome.reason,
            "reason_detail": detail,
            "agents": len(fitting),
            "gpus": gpus,
            "models": [{"model": m, **counts} for m, counts in sorted(by_model.items())],
            "price_per_gpu_hour_micro_yuan": price,
            "price_per_gpu_hour_exact": exact,
        }

    async def _reservation(self, job: Job, now: int) -> dict[str, Any]:
        """What `reserve_job` would hold for the job, in a savepoint rolled back at once."""
        max_cost = job.request.max_cost_micro_yuan
        policy = self.policy

        def rehearse(db: Session) -> None:
            reservation = billing.reserve_job(
                db, job.id, job.enterprise_id, max_cost, policy=policy, now_ms=now
            )
            raise _Rehearsed(reservation)

        answer: dict[str, Any] = {
            "max_cost_micro_yuan": max_cost,
            "voucher_micro_yuan": 0,
            "own_money_micro_yuan": max_cost,
            "coverage_bps": policy.coverage_bps,
            "refused": None,
        }
        try:
            await self.database.run(rehearse)
        except _Rehearsed as rehearsed:
            held = rehearsed.reservation
            answer["voucher_micro_yuan"] = held.voucher_estimate
            answer["own_money_micro_yuan"] = held.amount
        except (billing.CreditExceeded, billing.Suspended) as exc:
            answer["refused"] = exc.detail.replace(f"job {job.id}'s", "this job's")
        return answer


_NOTHING_OF_THE_AUCTION: dict[str, Any] = {
    "runs_now": False,
    "reason": "refused",
    "reason_detail": None,
    "agents": 0,
    "gpus": 0,
    "models": [],
    "price_per_gpu_hour_micro_yuan": None,
    "price_per_gpu_hour_exact": False,
}


def _enterprise_only(principal: Principal) -> None:
    if principal.role != "enterprise":
        raise Forbidden("only enterprise accounts can ask for a quote")


def _fitting_gpus(request: JobRequest, gpus: tuple[GpuOffer, ...]) -> list[GpuOffer]:
    return [g for g in gpus if qualifies(g, request.gpu_models, request.min_gpu_memory_bytes)]
