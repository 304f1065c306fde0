"""The list of test modules that run on every database engine names real modules that are
parametrised by engine, so a rename cannot silently drop PostgreSQL from the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from databases import EVERY_TEST_ON_EVERY_ENGINE, ON_EVERY_ENGINE, runs_on

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_named_to_run_on_every_engine_exists_and_is_parametrised_by_engine() -> None:
    for module in sorted(ON_EVERY_ENGINE):
        path = ROOT / module
        assert path.is_file(), f"{module} is listed in ON_EVERY_ENGINE but does not exist"
        source = path.read_text()
        uses_engines = any(
            name in source
            for name in ("engine_params", "engine_name", "database_location", "coordinator")
        )
        assert uses_engines, f"{module} is listed in ON_EVERY_ENGINE but is not engine-parametrised"


@pytest.mark.skipif(EVERY_TEST_ON_EVERY_ENGINE, reason="this run puts every test on every engine")
def test_sqlite_runs_every_module_and_postgresql_only_the_listed_ones() -> None:
    listed = sorted(ON_EVERY_ENGINE)[0]
    assert runs_on("tests/integration/test_bad_input.py", "sqlite")
    assert runs_on(listed, "postgresql")
    assert not runs_on("tests/integration/test_bad_input.py", "postgresql")
