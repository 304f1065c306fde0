"""The billable window (`shared.billing_window`): when a lease's GPU time may be billed."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.billing_window import CLOCK_SKEW_MS, LeaseTerms, LeaseWindow, check_window
from shared.errors import ReceiptRuleError

AWARD = 1_000_000
TERMS = LeaseTerms(
    "lease-1",
    "job-1",
    "agent-1",
    ("GPU-a", "GPU-b"),
    6_000_000,
    AWARD,
    max_duration_ms=600_000,
    stop_grace_ms=30_000,
)


class Billed(NamedTuple):
    issued_at_ms: int
    gpu_ms: int


def window(
    opened: int | None = AWARD + 5_000, stop: int | None = None, ended: int | None = None
) -> LeaseWindow:
    found = LeaseWindow(TERMS)
    if opened is not None:
        found.open(opened)
    if stop is not None:
        found.request_stop(stop)
    if ended is not None:
        found.end(ended)
    return found


@pytest.mark.parametrize(
    ("stop", "ended", "closes"),
    [
        (None, None, AWARD + 600_000),  # the maximum duration
        (AWARD + 100_000, None, AWARD + 130_000),  # a cancel plus the stop grace
        (AWARD + 590_000, None, AWARD + 600_000),  # a late cancel cannot extend the lease
        (None, AWARD + 50_000, AWARD + 50_000),  # the container's exit, or the agent lost
        (AWARD + 100_000, AWARD + 110_000, AWARD + 110_000),
    ],
)
def test_the_window_closes_at_the_earliest_of_its_ends(
    stop: int | None, ended: int | None, closes: int
) -> None:
    assert window(stop=stop, ended=ended).closes_at_ms == closes


def test_a_start_reported_before_the_award_counts_from_the_award() -> None:
    assert window(opened=AWARD - 10_000).opened_at_ms == AWARD


def test_gpu_time_is_bounded_by_issue_arrival_and_close() -> None:
    found = window(ended=AWARD + 65_000)
    # two GPUs from the start at +5 s
    assert found.billable_gpu_ms(AWARD + 25_000, AWARD + 30_000) == 2 * 20_000
    assert found.billable_gpu_ms(AWARD + 35_000, AWARD + 30_000) == 2 * 25_000  # arrival first
    assert found.billable_gpu_ms(AWARD + 99_000, AWARD + 99_000) == 2 * 60_000  # the close
    assert found.billable_gpu_ms(AWARD + 1_000, AWARD + 1_000) == 0  # before the start


@pytest.mark.parametrize(
    ("opened", "receipt", "accepted", "rule"),
    [
        (None, Billed(AWARD + 10_000, 0), AWARD + 10_000, "lease_not_started"),
        (AWARD, Billed(AWARD + 10_000 + CLOCK_SKEW_MS + 1, 10), AWARD + 10_000, "time_window"),
        (
            AWARD,
            Billed(AWARD + 10_000 + CLOCK_SKEW_MS, 2 * 10_000 + 1),
            AWARD + 10_000,
            "outside_billable_window",
        ),
        (AWARD, Billed(AWARD + 700_000, 2 * 600_001), AWARD + 700_000, "outside_billable_window"),
    ],
)
def test_receipts_outside_the_window_are_refused_by_name(
    opened: int | None, receipt: Billed, accepted: int, rule: str
) -> None:
    with pytest.raises(ReceiptRuleError) as caught:
        check_window(window(opened=opened), receipt, accepted)
    assert caught.value.rule == rule
    assert caught.value.detail


def test_a_receipt_inside_the_window_passes() -> None:
    check_window(
        window(opened=AWARD), Billed(AWARD + 10_000 + CLOCK_SKEW_MS, 2 * 10_000), AWARD + 10_000
    )


times = st.integers(min_value=AWARD - 100_000, max_value=AWARD + 2_000_000)


@given(opened=times, stop=st.none() | times, ended=st.none() | times, issued=times, accepted=times)
def test_no_accepted_receipt_bills_beyond_the_window_or_the_maximum(
    opened: int, stop: int | None, ended: int | None, issued: int, accepted: int
) -> None:
    found = window(opened=opened, stop=stop, ended=ended)
    limit = found.billable_gpu_ms(issued, accepted)
    if issued <= accepted + CLOCK_SKEW_MS and found.opened_at_ms is not None:
        check_window(found, Billed(issued, limit), accepted)
    assert 0 <= limit <= 2 * max(0, found.closes_at_ms - max(opened, AWARD))
    assert limit <= 2 * TERMS.max_duration_ms
    assert limit <= 2 * max(0, accepted - max(opened, AWARD))
    with pytest.raises(ReceiptRuleError):
        check_window(found, Billed(issued, limit + 1), accepted)
