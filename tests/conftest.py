"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from coordinator_harness import Api, CoordinatorProcess, FakeAgent
from engines import docker_service, engine, engine_service, podman_service  # noqa: F401


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    process = CoordinatorProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def cleanup() -> AsyncIterator[list[FakeAgent | Api]]:
    things: list[FakeAgent | Api] = []
    yield things
    for thing in things:
        await thing.close()
