"""`--db` and `database`: what an operator types is checked and named back, never a password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from coordinator_harness import BIN

from coordinator.storage import describe
from coordinator.storage.engines import check_location


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (
            "postgresql://suanli:s3cret@db.example.cn/suanli",
            "postgresql://suanli@db.example.cn/suanli",
        ),
        ("postgresql://suanli@db/x?password=s3cret&sslmode=require", "password=***&sslmode"),
        ("sqlite:/var/lib/suanli/coordinator.db", "/var/lib/suanli/coordinator.db"),
    ],
)
def test_a_database_is_named_without_its_password(location: str, shown: str) -> None:
    assert shown in describe(location)
    assert "s3cret" not in describe(location)


@pytest.mark.parametrize(
    ("location", "error"),
    [
        ("mysql://x/y", "--db mysql://...: Suanli runs on SQLite"),
        ("  ", "--db is empty"),
        ("postgresql://u@h/db?bogus_option=1", "is not a PostgreSQL URL"),
    ],
)
def test_a_bad_db_flag_is_refused_naming_it(location: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("?", r"\?").replace(".", r"\.")):
        check_location(location)


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "suanli-coordinator", "admin", *args], capture_output=True, text=True
    )


def test_an_unreachable_database_is_one_sentence_without_the_password(tmp_path: Path) -> None:
    answer = _admin("--db", "postgresql://suanli:s3cret@127.0.0.1:1/suanli", "list")
    assert answer.returncode == 1
    assert answer.stderr.startswith(
        "suanli-coordinator: cannot open the database postgresql://suanli@127.0.0.1:1/suanli"
    )
    assert "s3cret" not in answer.stderr and "Traceback" not in answer.stderr
    missing = _admin("--db", str(tmp_path / "no" / "such" / "dir.db"), "list")
    assert missing.returncode == 1 and "cannot open the database" in missing.stderr


def test_the_database_comes_from_the_config_file_when_db_is_not_given(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[coordinator]\ndatabase = "{tmp_path / "from-config.db"}"\n')
    assert _admin("--config", str(config), "list").returncode == 0
    assert (tmp_path / "from-config.db").exists()
    nothing = _admin("list")
    assert nothing.returncode == 1
    assert "no database given: pass --db, or set database in coordinator.toml" in nothing.stderr
    config.write_text('[coordinator]\ndatabase = "mysql://x"\n')
    bad = _admin("--config", str(config), "list")
    assert bad.returncode == 1 and "database in coordinator.toml: --db mysql://" in bad.stderr


def test_a_second_coordinator_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    from coordinator_harness import CoordinatorProcess

    first = CoordinatorProcess(tmp_path).start()
    try:
        second = subprocess.run(
            [BIN / "suanli-coordinator", "serve", "--db", first.db, "--listen", "127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "another suanli-coordinator already serves" in second.stderr
        assert "several share a PostgreSQL database" in second.stderr
    finally:
        first.stop()
    first.start()  # the lock goes with the process that held it
    first.stop()
