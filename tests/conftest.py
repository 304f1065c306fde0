"""Fixtures shared by every area, and the `integration` marker given to tests of real processes.

A test is `integration` when it lives in `tests/integration`, uses a fixture that starts a real
process (a coordinator, a container engine), or starts one itself (`CoordinatorProcess(`,
`AgentProcess(`, `subprocess.`). `scripts/test --fast` runs the others.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from coordinator_harness import UNHURRIED_SETTINGS, Api, CoordinatorProcess, FakeAgent
from databases import (  # noqa: F401
    ENGINES,
    close_opened,
    database_location,
    engine_name,
    new_database,
    runs_on,
    stop_shared_cluster,
)
from engines import docker_service, engine, engine_service, podman_service  # noqa: F401


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared_cluster()


@pytest.fixture(autouse=True)
def _close_opened_databases() -> Iterator[None]:
    yield
    close_opened()


@pytest.fixture
def coordinator(tmp_path: Path, engine_name: str) -> Iterator[CoordinatorProcess]:
    """A coordinator process, on each database engine in turn."""
    database = new_database(engine_name, tmp_path)
    process = CoordinatorProcess(tmp_path, database=database).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def unhurried_coordinator(tmp_path: Path, engine_name: str) -> Iterator[CoordinatorProcess]:
    """A coordinator that calls no agent lost or late within the test's few seconds."""
    database = new_database(engine_name, tmp_path)
    process = CoordinatorProcess(
        tmp_path, settings=dict(UNHURRIED_SETTINGS), database=database
    ).start()
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


REAL_PROCESS_FIXTURES = frozenset(
    {
        "coordinator",
        "unhurried_coordinator",
        "engine",
        "engine_service",
        "docker_service",
        "podman_service",
    }
)
STARTS_A_PROCESS = ("CoordinatorProcess(", "AgentProcess(", "subprocess.")
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def _starts_real_processes(item: pytest.Item) -> bool:
    if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
        return True
    if REAL_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    if function is None:
        return False
    source = inspect.getsource(function)
    return any(marker in source for marker in STARTS_A_PROCESS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = [], []
    for item in items:
        if _starts_real_processes(item):
            item.add_marker(pytest.mark.integration)
        callspec = getattr(item, "callspec", None)
        # fixtures parametrised by `engine_params()`, whatever their names, take engine names
        values = callspec.params.values() if callspec is not None else ()
        engines = [value for value in values if isinstance(value, str) and value in ENGINES]
        module = item.nodeid.split("::", 1)[0]
        on = all(runs_on(module, engine) for engine in engines)
        (kept if on else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
