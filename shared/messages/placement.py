"""What a job asks of its host beyond GPUs: network egress and a scratch volume. The field types
of the job's submission (api.JobSubmit) and its view (api.JobSpecView)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.messages.agent_protocol import JobNetwork

MAX_SCRATCH_BYTES = 1 << 44  # 16 TiB: more than any provider's data disk offers one job
MIN_SCRATCH_BYTES = 16 << 20  # a smaller volume could not hold its own filesystem

Network = Annotated[
    JobNetwork,
    msgspec.Meta(
        description="none: no network; egress: the internet only (never the provider's LAN), "
        "and only on agents that allow it"
    ),
]
ScratchBytes = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_SCRATCH_BYTES,
        description="size of a writable volume at /scratch on the provider's disk, at least "
        "16 MiB, deleted when the job ends (0: none, and /scratch is small and in memory)",
    ),
]


def check_scratch(scratch_bytes: int) -> None:
    """Refuse a scratch volume too small to hold a filesystem (0 asks for none)."""
    if 0 < scratch_bytes < MIN_SCRATCH_BYTES:
        raise ValueError(
            f"scratch_bytes: expected 0 or at least {MIN_SCRATCH_BYTES}, got {scratch_bytes}"
        )
