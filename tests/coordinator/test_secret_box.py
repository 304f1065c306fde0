"""Job secrets sealed at rest: bound to their job and name, under a key file only its owner
reads, made by a leader and only read by a standby."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coordinator.config import ConfigError
from coordinator.secret_box import SEALED_PREFIX, SecretBox, secrets_key_location


def test_the_key_sits_beside_the_log_key() -> None:
    assert secrets_key_location(Path("/v/coordinator.db.key")) == Path(
        "/v/coordinator.db.secrets-key"
    )
    assert secrets_key_location(Path("/etc/suanli/log.key")) == Path("/etc/suanli/log.secrets-key")


def test_a_value_opens_only_for_its_job_and_name(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "s.secrets-key")
    sealed = box.seal("job-1", "HF_TOKEN", "hf_value")
    assert sealed.startswith(SEALED_PREFIX) and "hf_value" not in sealed
    assert sealed != box.seal("job-1", "HF_TOKEN", "hf_value"), "a fresh nonce each time"
    again = SecretBox(tmp_path / "s.secrets-key")  # a restart reads the same key
    assert again.open("job-1", "HF_TOKEN", sealed) == "hf_value"
    for job_id, name in (("job-2", "HF_TOKEN"), ("job-1", "OTHER")):
        with pytest.raises(ConfigError, match="does not open"):
            again.open(job_id, name, sealed)
    assert stat.S_IMODE((tmp_path / "s.secrets-key").stat().st_mode) == 0o600


def test_another_key_does_not_open_it(tmp_path: Path) -> None:
    sealed = SecretBox(tmp_path / "a.secrets-key").seal("job-1", "A", "v")
    with pytest.raises(ConfigError, match="b.secrets-key"):
        SecretBox(tmp_path / "b.secrets-key").open("job-1", "A", sealed)
    assert SecretBox(tmp_path / "b.secrets-key").open("job-1", "A", "clear") == "clear"


def test_a_standby_makes_no_key_and_says_where_it_looks(tmp_path: Path) -> None:
    standby = SecretBox(tmp_path / "log.secrets-key", create=False)
    with pytest.raises(ConfigError, match="no secrets key at .*log.secrets-key"):
        standby.seal("job-1", "A", "v")
    assert not (tmp_path / "log.secrets-key").exists()
    (tmp_path / "log.secrets-key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="is not a secrets key"):
        standby.seal("job-1", "A", "v")


def test_a_leader_without_the_key_of_sealed_values_makes_none(tmp_path: Path) -> None:
    sealed = SecretBox(tmp_path / "first.secrets-key").seal("job-1", "A", "v")
    second = SecretBox(tmp_path / "second.secrets-key")  # a leader on another machine
    with pytest.raises(ConfigError, match="no secrets key at .*second.secrets-key.*copy the key"):
        second.open("job-1", "A", sealed)
    assert not (tmp_path / "second.secrets-key").exists(), "no key of its own was made"


def test_a_damaged_sealed_value_is_named(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "s.secrets-key")
    box.seal("job-1", "A", "v")
    with pytest.raises(ConfigError, match="secret A of job job-1 is damaged"):
        box.open("job-1", "A", SEALED_PREFIX + "not base64!")
    with pytest.raises(ConfigError, match="does not open"):
        box.open("job-1", "A", SEALED_PREFIX + "c2hvcnQ=")
