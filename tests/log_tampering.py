"""Logs a coordinator could write that are self-consistent (rebuilt tree, re-signed) but say
what did not happen: each builder takes the honest story and changes its contents one way."""

from __future__ import annotations

from dataclasses import replace

from log_story import Story, usage_postings


def drop_agent(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:2] + leaves[3:]


def tampered_receipt(story: Story) -> list[bytes]:
    leaves = story.honest()
    envelope = bytearray(story.sealed[1].envelope)
    envelope[10] ^= 0x01
    leaves[6] = story.receipt_entry(story.sealed[1], envelope=bytes(envelope))
    return leaves


def rigged_auction(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[4] = story.auction_entry(replace(story.outcome, price_per_gpu_hour=9_000_000))
    return leaves


def inflated_postings(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[6] = story.receipt_entry(
        story.sealed[1], postings=usage_postings(story.sealed[1].digest, 999_999)
    )
    return leaves


def unposted_usage(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[7] = story.receipt_entry(story.sealed[2], postings=())
    return leaves


def posted_too_early(story: Story) -> list[bytes]:
    # the batch's first receipt carries the postings of all three: more than it adds so far
    leaves = story.honest()
    leaves[5] = story.receipt_entry(
        story.sealed[0],
        postings=usage_postings(story.sealed[0].digest, story.sealed[2].receipt.amount),
    )
    leaves[6] = story.receipt_entry(story.sealed[1], postings=())
    leaves[7] = story.receipt_entry(story.sealed[2], postings=())
    return leaves


def missing_receipt(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:6] + leaves[7:]


def double_posting(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[7] = story.receipt_entry(
        story.sealed[2],
        postings=usage_postings(
            story.sealed[1].digest, story.sealed[2].receipt.amount - story.sealed[1].receipt.amount
        ),
    )
    return leaves


def no_auction(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:4] + leaves[5:]
