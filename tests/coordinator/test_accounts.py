"""Accounts through the admin command: USCC checks, one enterprise per USCC, hashed tokens."""

from __future__ import annotations

from pathlib import Path

import databases
import pytest
from coordinator_harness import BIN, CoordinatorProcess, uscc
from databases import new_database


@pytest.fixture
def admin(tmp_path: Path, engine_name: str) -> CoordinatorProcess:
    return CoordinatorProcess(tmp_path, database=new_database(engine_name, tmp_path))


def test_tokens_are_shown_once_and_stored_only_as_hashes(admin: CoordinatorProcess) -> None:
    enterprise = admin.admin_json("add-enterprise", "--name", "Acme AI", "--uscc", uscc(1))
    provider = admin.admin_json("add-provider", "--name", "DC One", "--uscc", uscc(2))
    auditor = admin.admin_json("add-auditor", "--name", "Audit office")
    secrets = [enterprise["token"], provider["enrolment_token"], auditor["token"]]
    assert [s[:7] for s in secrets] == ["sk_ent_", "sk_enr_", "sk_aud_"]
    dump = databases.dump(admin.db)
    for secret in secrets:
        assert secret not in dump


def test_human_output_says_the_token_is_shown_once(admin: CoordinatorProcess) -> None:
    out = admin.admin("add-enterprise", "--name", "Acme AI", "--uscc", uscc(1)).stdout
    assert "shown once" in out and "sk_ent_" in out


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("91350100M000100Y44", "should be '3'"),
        ("91350100M000100Y4", "has 17 characters"),
        ("91350100m000100Y43", "upper case"),
        ("91350100O000100Y43", "never used"),
    ],
)
def test_invalid_uscc_is_refused_with_a_sentence(
    admin: CoordinatorProcess, code: str, message: str
) -> None:
    result = admin.admin("add-enterprise", "--name", "Acme", "--uscc", code, check=False)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert admin.admin_json("list")["enterprises"] == []


def test_one_enterprise_per_uscc(admin: CoordinatorProcess) -> None:
    admin.admin("add-enterprise", "--name", "Acme", "--uscc", uscc(7))
    result = admin.admin("add-enterprise", "--name", "Acme again", "--uscc", uscc(7), check=False)
    assert result.returncode == 1 and "already has an enterprise account" in result.stderr
    assert len(admin.admin_json("list")["enterprises"]) == 1


def test_a_provider_may_also_be_an_enterprise(admin: CoordinatorProcess) -> None:
    admin.admin("add-provider", "--name", "Both Co", "--uscc", uscc(8))
    admin.admin("add-enterprise", "--name", "Both Co", "--uscc", uscc(8))
    listing = admin.admin_json("list")
    assert listing["providers"][0]["uscc"] == listing["enterprises"][0]["uscc"]


def test_enrolment_tokens_for_more_hosts(admin: CoordinatorProcess) -> None:
    provider = admin.admin_json("add-provider", "--name", "DC", "--uscc", uscc(3))
    more = admin.admin_json(
        "enrolment-token", "--provider", provider["provider_id"], "--max-hosts", "50"
    )
    assert more["enrolment_token"].startswith("sk_enr_")
    missing = admin.admin("enrolment-token", "--provider", "prov-nope", check=False)
    assert missing.returncode == 1 and "no provider prov-nope" in missing.stderr


def test_list_prints_tables(admin: CoordinatorProcess) -> None:
    admin.admin("add-enterprise", "--name", "Table Co", "--uscc", uscc(4))
    out = admin.admin("list").stdout
    assert "Table Co" in out and uscc(4) in out


def test_admin_needs_a_task(admin: CoordinatorProcess) -> None:
    import subprocess

    result = subprocess.run(
        [BIN / "suanli-coordinator", "admin", "--db", str(admin.db)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "required" in result.stderr
