"""The auditor's replay of auctions: every round of the log re-run with `shared.auction`, the
coordinator's own rule, and every lease (and the receipts that bill it) matched to a round
whose replay agreed."""

from __future__ import annotations

from collections.abc import Callable

from shared import log_entries as L
from shared.auction import AuctionError, Outcome, replay, replay_round, round_from_record
from shared.money import format_money

Problem = Callable[[str, str, int], None]


class AuctionAudit:
    """Replays the rounds as the log is read, keeping the awards whose replay agreed."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.replayed = 0
        # job_id -> {(agent_id, price, sorted GPU uuids)} of rounds whose replay agreed
        self.awards: dict[str, set[tuple[str, int, tuple[str, ...]]]] = {}

    def round(self, index: int, body: L.AuctionRoundEntry) -> None:
        record = body.decoded()
        try:
            agrees = replay(record)
        except AuctionError as exc:
            self.problem(
                "bad_auction", f"the auction round cannot be replayed: {exc.detail}", index
            )
            return
        self.replayed += 1
        _, _, recorded = round_from_record(record)
        if not agrees:
            again = replay_round(record)
            self.problem(
                "auction_mismatch",
                f"the round for job {recorded.job_id} records "
                f"{_outcome_text(recorded)}, but replaying its inputs gives "
                f"{_outcome_text(again)}",
                index,
            )
            return
        if recorded.winner is not None and recorded.price_per_gpu_hour is not None:
            self.awards.setdefault(recorded.job_id, set()).add(
                (recorded.winner, recorded.price_per_gpu_hour, tuple(sorted(recorded.gpu_uuids)))
            )

    def awarded(
        self,
        index: int,
        what: str,
        job_id: str,
        agent_id: str,
        price: int,
        gpu_uuids: tuple[str, ...],
    ) -> None:
        """A lease, or the receipts that bill it, must follow an auction round that replays."""
        if (agent_id, price, tuple(sorted(gpu_uuids))) not in self.awards.get(job_id, set()):
            self.problem(
                "unawarded_lease",
                f"{what} job {job_id} on agent {agent_id[:16]}… at "
                f"{format_money(price)} per GPU-hour, but no earlier auction round of the log "
                "(that replays) awarded the job to that agent, price and GPUs",
                index,
            )


def _outcome_text(outcome: Outcome) -> str:
    if outcome.winner is None:
        return f"no winner ({outcome.reason})"
    ranking = ", ".join(agent[:12] for agent in outcome.eligible)
    price = outcome.price_per_gpu_hour
    return (
        f"winner {outcome.winner[:16]}… at {'-' if price is None else format_money(price)} per "
        f"GPU-hour on {', '.join(outcome.gpu_uuids)} (ranking {ranking})"
    )
