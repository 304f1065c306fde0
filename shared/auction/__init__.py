"""The sealed-bid reverse auction: a pure function of a round's inputs that auditors replay.

`run_auction(job, offers)` picks the winner and its price; the coordinator records each
round with `round_record` and anyone can recompute it with `replay`. Everything is an
int, str, bool or tuple (money in micro-yuan per GPU-hour, reliability in parts per
million), so a replay on any machine gives the same outcome bit for bit.

`values` declares the round's parts, `rule` decides a round, `record` encodes the round for
the log and replays it.
"""

from shared.auction.record import (
    ROUND_VERSION,
    job_from_wire,
    job_to_wire,
    offers_from_wire,
    offers_to_wire,
    outcome_from_wire,
    outcome_to_wire,
    replay,
    replay_round,
    round_from_record,
    round_record,
)
from shared.auction.rule import eligible_offers, run_auction
from shared.auction.values import (
    NO_AGENT_ALLOWS_EGRESS,
    NO_AGENT_AT_OR_BELOW_MAX_PRICE,
    NO_AGENT_WITH_ENOUGH_GPU_MEMORY,
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_ENOUGH_SCRATCH,
    NO_AGENT_WITH_THAT_MODEL,
    REASONS,
    RELIABILITY_MAX_PPM,
    AgentOffer,
    AuctionError,
    GpuOffer,
    JobSpec,
    Outcome,
)

__all__ = [
    "NO_AGENT_ALLOWS_EGRESS",
    "NO_AGENT_AT_OR_BELOW_MAX_PRICE",
    "NO_AGENT_WITH_ENOUGH_GPUS",
    "NO_AGENT_WITH_ENOUGH_GPU_MEMORY",
    "NO_AGENT_WITH_ENOUGH_SCRATCH",
    "NO_AGENT_WITH_THAT_MODEL",
    "REASONS",
    "RELIABILITY_MAX_PPM",
    "ROUND_VERSION",
    "AgentOffer",
    "AuctionError",
    "GpuOffer",
    "JobSpec",
    "Outcome",
    "eligible_offers",
    "job_from_wire",
    "job_to_wire",
    "offers_from_wire",
    "offers_to_wire",
    "outcome_from_wire",
    "outcome_to_wire",
    "replay",
    "replay_round",
    "round_from_record",
    "round_record",
    "run_auction",
]
