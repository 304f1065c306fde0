"""A rogue coordinator holds the log key and can sign any log: `suanli audit verify` still
refuses every charge outside a lease's billable window, recomputed from the log alone."""

from __future__ import annotations

from pathlib import Path

from log_story import (  # noqa: F401 - fixtures
    GPUS,
    MAX_DURATION_MS,
    STARTED,
    T0,
    Story,
    codes,
    log_key,
    story,
    usage_postings,
    verify,
    write_log,
)

from shared import log_entries as L
from shared.identity import PrivateKey
from shared.signed_request import sign_request

LEASE = "lease-1"
FIRST_RECEIPT = 5  # receipts are entries 5-7 of the story


def honest_without_lease(story: Story) -> list[bytes]:
    return story.honest()[:10]


def award(story: Story, price: int | None = None, grace_ms: int = 60_000) -> bytes:
    return L.encode_entry(
        L.LEASE_AWARD,
        T0 + 3,
        L.LeaseAwardEntry(
            LEASE,
            "job-1",
            story.agent.public.agent_id,
            GPUS,
            price or story.price,
            MAX_DURATION_MS,
            grace_ms,
        ),
    )


def started(story: Story, signer: PrivateKey | None = None, at_ms: int = T0 + STARTED) -> bytes:
    report = sign_request(
        signer or story.agent,
        "POST",
        "/v1/agent/status",
        {"lease_id": LEASE, "event": "started"},
        at_ms,
    )
    return L.encode_entry(
        L.LEASE_EVENT, at_ms, L.LeaseEventEntry(LEASE, L.LEASE_STARTED, report=report)
    )


def event(kind: str, at_ms: int, reason: str) -> bytes:
    return L.encode_entry(L.LEASE_EVENT, at_ms, L.LeaseEventEntry(LEASE, kind, reason))


async def audited(
    database_location: str, story: Story, log_key: PrivateKey, entries: list[bytes]
) -> tuple[set[str], set[int]]:
    path = database_location
    write_log(path, log_key, entries)
    report = await verify(path, log_key)
    return codes(report), {
        d.index for d in report.discrepancies if d.code == "outside_billable_window"
    }


async def test_the_honest_story_passes_with_its_window_closed_after_its_receipts(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    entries = honest_without_lease(story) + [
        award(story),
        started(story),
        event(L.LEASE_ENDED, T0 + STARTED + 200_000, "exited"),
    ]
    assert await audited(database_location, story, log_key, entries) == (set(), set())


async def test_receipts_after_the_lease_ended_fail_the_audit(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    # the agent was lost 90 s in; the coordinator accepted two more minutes of GPU time
    entries = honest_without_lease(story) + [
        award(story),
        started(story),
        event(L.LEASE_ENDED, T0 + STARTED + 90_000, "agent_lost"),
    ]
    found, where = await audited(database_location, story, log_key, entries)
    assert found == {"outside_billable_window"}
    assert where == {FIRST_RECEIPT + 1, FIRST_RECEIPT + 2}


async def test_receipts_past_a_cancel_and_its_grace_fail_the_audit(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    # cancelled 60 s in with a 60 s grace: the second receipt ends exactly at the close
    entries = honest_without_lease(story) + [
        award(story),
        started(story),
        event(L.LEASE_STOP_REQUESTED, T0 + STARTED + 60_000, "cancelled"),
    ]
    found, where = await audited(database_location, story, log_key, entries)
    assert (found, where) == ({"outside_billable_window"}, {FIRST_RECEIPT + 2})


async def test_a_lease_never_started_may_bill_nothing(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    found, where = await audited(
        database_location, story, log_key, honest_without_lease(story) + [award(story)]
    )
    assert found == {"outside_billable_window"}
    assert where == {FIRST_RECEIPT, FIRST_RECEIPT + 1, FIRST_RECEIPT + 2}


async def test_a_start_the_agent_never_signed_opens_no_window(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    entries = honest_without_lease(story) + [award(story), started(story, signer=story.rival)]
    found, where = await audited(database_location, story, log_key, entries)
    assert found == {"bad_start_report", "outside_billable_window"}
    assert len(where) == 3
    # a start the coordinator logged before the agent signed it is refused the same way
    signed_late = L.decode_entry(started(story, at_ms=T0 + STARTED + 120_000)).body
    entries = honest_without_lease(story) + [
        award(story),
        L.encode_entry(L.LEASE_EVENT, T0 + STARTED, signed_late),
    ]
    found, _ = await audited(database_location, story, log_key, entries)
    assert "bad_start_report" in found


async def test_a_receipt_accepted_before_it_was_issued_fails_the_audit(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    entries = honest_without_lease(story) + [award(story), started(story)]
    third = story.sealed[2]
    entries[FIRST_RECEIPT + 2] = L.encode_entry(
        L.RECEIPT,
        third.receipt.issued_at_ms - 31_000,
        L.ReceiptEntry(third.envelope, usage_postings(third.digest, story.delta(third))),
    )
    found, where = await audited(database_location, story, log_key, entries)
    assert (found, where) == ({"outside_billable_window"}, {FIRST_RECEIPT + 2})


async def test_receipts_of_a_lease_the_log_never_awarded_fail_the_audit(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    found, where = await audited(database_location, story, log_key, honest_without_lease(story))
    assert found == {"outside_billable_window"} and len(where) == 3
    # an award at another price than the auction's is caught, and the receipts do not match it
    entries = honest_without_lease(story) + [award(story, price=story.price + 1), started(story)]
    found, _ = await audited(database_location, story, log_key, entries)
    assert {"unawarded_lease", "lease_terms"} <= found
