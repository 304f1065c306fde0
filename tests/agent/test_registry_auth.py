"""Registry credentials on the agent: the X-Registry-Auth header, kept out of reprs and the
spool, and a registry's refusal told in the registry's own words."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, cast

import pytest

from agent.engine import RegistryAuthRefused, RegistryCredentials
from agent.engine.errors import auth_refusal
from agent.lease import LeaseRecord, LeaseTerms
from agent.runner import LeaseRunner
from agent.spool import Spool

PASSWORD = "pw-9d1e5c0a-not-in-the-spool"
AUTH = {"username": "team", "password": PASSWORD, "serveraddress": "registry.example:5000"}
REF = "registry.example:5000/team/train:1"


def _lease(job_extra: dict[str, object]) -> LeaseTerms:
    return LeaseTerms.from_wire(
        {
            "lease_id": "lease-1",
            "job_id": "job-1",
            "gpu_uuids": ["GPU-a"],
            "price_per_gpu_hour": 1_000_000,
            "job": {
                "image": REF,
                "command": ["true"],
                "env": {},
                "cpus_milli": 1000,
                "memory_bytes": 1 << 26,
                "max_duration_s": 60,
                **job_extra,
            },
        }
    )


def test_the_header_is_base64url_json_of_the_three_fields() -> None:
    credentials = RegistryCredentials.from_wire(AUTH)
    assert credentials is not None
    header = credentials.header()["X-Registry-Auth"]
    assert json.loads(base64.urlsafe_b64decode(header)) == AUTH
    assert PASSWORD not in repr(credentials)


@pytest.mark.parametrize("bad", [None, "team:pw", {"username": "team"}, []])
def test_credentials_that_are_not_whole_are_none(bad: object) -> None:
    assert RegistryCredentials.from_wire(bad) is None


def test_credentials_stay_out_of_the_spool_and_the_image_stays_private(tmp_path: Path) -> None:
    terms = _lease({"registry_auth": AUTH})
    assert terms.job is not None and terms.job.registry_auth is not None
    assert terms.job.private_image and PASSWORD not in repr(terms)
    spool = Spool(tmp_path / "spool.db")
    spool.save_lease(LeaseRecord(terms, created_at_ms=1))
    spool.close()
    assert PASSWORD.encode() not in (tmp_path / "spool.db").read_bytes()
    (back,) = Spool(tmp_path / "spool.db").leases()
    assert back.terms.job is not None
    assert back.terms.job.registry_auth is None and back.terms.job.private_image
    public = _lease({})
    assert public.job is not None and not public.job.private_image


@pytest.mark.parametrize(
    "message",
    [
        # dockerd 20.10, as it answered a wrong password
        'Head "https://127.0.0.1:5000/v2/team/train/manifests/1": unauthorized: '
        "authentication required",
        # Podman 4.3
        "initializing source docker://127.0.0.1:5000/team/train:1: reading manifest 1 in "
        "127.0.0.1:5000/team/train: unauthorized: authentication required",
    ],
)
def test_a_refusal_is_told_in_the_registrys_words(message: str) -> None:
    refused = auth_refusal(REF, "registry.example:5000", message)
    assert isinstance(refused, RegistryAuthRefused) and refused.code == "registry_auth_refused"
    assert refused.detail == (
        f"registry registry.example:5000 refused the credentials given for image {REF}: "
        "unauthorized: authentication required"
    )
    assert "127.0.0.1" not in refused.detail


def test_other_failures_are_not_called_refusals() -> None:
    assert auth_refusal(REF, "h", "manifest unknown: manifest unknown") is None
    assert auth_refusal(REF, "h", "dial tcp 10.0.0.3:5000: connect: connection refused") is None


def _restarted_runner(tmp_path: Path) -> LeaseRunner:
    """The runner of a private image's lease as a restarted agent has it: from the spool,
    which never kept the credentials."""
    spool = Spool(tmp_path / "spool.db")
    spool.save_lease(LeaseRecord(_lease({"registry_auth": AUTH}), created_at_ms=1))
    (record,) = spool.leases()
    spool.close()
    return LeaseRunner(cast(Any, None), record)


async def test_a_restarted_agent_takes_the_credentials_again_from_a_lease_poll(
    tmp_path: Path,
) -> None:
    runner = _restarted_runner(tmp_path)
    waiting = asyncio.create_task(runner._credentials_again())
    await asyncio.sleep(0)
    runner.refresh_credentials({"registry_auth": AUTH})  # not a whole job: ignored
    runner.refresh_credentials(_lease({"registry_auth": AUTH}).job.to_wire())  # type: ignore[union-attr]
    assert not waiting.done()
    runner.refresh_credentials({**_lease({}).job.to_wire(), "registry_auth": AUTH})  # type: ignore[union-attr]
    assert await waiting is True
    job = runner.record.terms.job
    assert job is not None and job.registry_auth is not None
    assert job.registry_auth.password == PASSWORD


async def test_credentials_are_not_taken_again_once_the_image_was_pulled(tmp_path: Path) -> None:
    runner = _restarted_runner(tmp_path)
    runner._pulled = True
    runner.refresh_credentials({**_lease({}).job.to_wire(), "registry_auth": AUTH})  # type: ignore[union-attr]
    assert runner.record.terms.job is not None and runner.record.terms.job.registry_auth is None


async def test_a_stop_ends_the_wait_for_credentials(tmp_path: Path) -> None:
    runner = _restarted_runner(tmp_path)
    runner._stop.set()
    assert await runner._credentials_again() is False
