"""POST /v1/jobs/quote's answer: what a job would meet if it were posted now, without posting
it. The price is told no finer than two significant figures unless it is the job's own max
price (see coordinator.jobs.quote for why)."""

from __future__ import annotations

from shared.messages.fields import Count, Message, MicroYuan


class QuoteModel(Message):
    """Of the agents that could run the job now, those with free GPUs of one model."""

    model: str
    agents: Count
    gpus: Count


class JobQuote(Message):
    """Would the job run now, at about what price, with how much voucher, holding how much."""

    runs_now: bool
    reason: str | None  # why it would wait, as a pending job's `reason` says it
    reason_detail: str | None
    agents: Count  # agents whose free GPUs fit the job now, whatever they ask
    gpus: Count  # their free GPUs that fit the job (model, memory, health)
    models: list[QuoteModel]
    # the price, or with exact false a ceiling on it: the second-lowest ask of the agents that
    # fit, rounded up to two significant figures, or the max price if lower
    price_per_gpu_hour_micro_yuan: MicroYuan | None
    price_per_gpu_hour_exact: bool
    max_cost_micro_yuan: MicroYuan
    voucher_micro_yuan: MicroYuan  # the voucher share held against the maximum cost
    own_money_micro_yuan: MicroYuan  # the rest, held on the enterprise's credit
    coverage_bps: int  # the voucher policy's share of each charge, in basis points
    refused: str | None  # the sentence a submission would be refused with now
