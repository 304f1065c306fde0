"""Job names and labels through a real coordinator (on each engine) and the real `suanli`
command: kept with the job across a restart, shown by `job show` and `job list`, filtered by
the coordinator, refused naming the label when malformed, and hidden from auditors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from coordinator_harness import Api, CoordinatorProcess
from suanli_run import ok, refused, suanli

pytestmark = pytest.mark.integration

JOB = ["--image", "busybox:latest", "--gpus", "1", "--max-duration", "10m"]
JOB += ["--max-price-per-gpu-hour", "5"]


def _cli(coordinator: CoordinatorProcess, token: str, home: Path, *args: str) -> Any:
    env = {"SUANLI_COORDINATOR": coordinator.url, "SUANLI_TOKEN": token}
    return suanli(*args, home=home, env=env)


async def test_names_and_labels_round_trip_and_filter(
    coordinator: CoordinatorProcess, cleanup: list[Any], tmp_path: Path
) -> None:
    token = coordinator.add_enterprise(1)
    other = coordinator.add_enterprise(2)
    auditor = coordinator.admin_json("add-auditor", "--name", "Audit")["token"]

    def submit(*flags: str, who: str = token) -> str:
        return str(ok(_cli(coordinator, who, tmp_path, "job", "submit", *JOB, *flags)).stdout)

    nlp_prod = submit("--name", "llama-ft-3", "--label", "team=nlp", "--label", "stage=prod")
    nlp_dev = submit("--name", "llama-ft-4", "--label", "team=nlp", "--label", "stage=dev")
    vision = submit("--label", "team=vision", "--label", "example.com/cost-centre=")
    submit("--name", "llama-ft-3", "--label", "team=nlp", "--label", "stage=prod", who=other)
    nlp_prod, nlp_dev, vision = nlp_prod.strip(), nlp_dev.strip(), vision.strip()

    coordinator.restart()  # kept in the job's stored spec, read back on start
    shown = ok(_cli(coordinator, token, tmp_path, "--json", "job", "show", nlp_prod)).json()
    assert shown["spec"]["name"] == "llama-ft-3"
    assert shown["spec"]["labels"] == {"stage": "prod", "team": "nlp"}
    text = ok(_cli(coordinator, token, tmp_path, "job", "show", nlp_prod)).stdout
    assert "name        llama-ft-3\n" in text and "labels      stage=prod,team=nlp\n" in text
    plain = ok(_cli(coordinator, token, tmp_path, "--json", "job", "show", vision)).json()
    assert plain["spec"]["name"] is None
    assert plain["spec"]["labels"] == {"team": "vision", "example.com/cost-centre": ""}

    table = ok(_cli(coordinator, token, tmp_path, "job", "list")).stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[2:]}
    assert (rows[nlp_prod], rows[nlp_dev], rows[vision]) == ("llama-ft-3", "llama-ft-4", "-")

    def listed(*flags: str, who: str = token) -> list[str]:
        answer = ok(_cli(coordinator, who, tmp_path, "--json", "job", "list", *flags)).json()
        return [job["id"] for job in answer["jobs"]]

    assert listed("--label", "team=nlp") == [nlp_dev, nlp_prod]
    assert listed("--label", "team=nlp", "--label", "stage=prod") == [nlp_prod]
    assert listed("--label", "team=nlp", "--label", "stage=qa") == []
    assert listed("--name", "llama-ft-4") == [nlp_dev]
    assert listed("--label", "example.com/cost-centre=") == [vision]
    # filtered before the limit, by the coordinator: the newest job does not match
    assert listed("--label", "stage=prod", "--limit", "1") == [nlp_prod]

    api = Api(coordinator.url, auditor)
    cleanup.append(api)
    status, everything = await api.call("GET", "/v1/jobs")
    seen = {job["id"]: job["spec"] for job in everything["jobs"]}
    # neither the label keys nor whether a job has a name or labels reach an auditor
    assert seen[nlp_prod]["name"] is None and seen[vision]["name"] is None
    assert seen[nlp_prod]["labels"] == {} == seen[vision]["labels"]
    assert "llama-ft-3" not in str(everything) and "nlp" not in str(everything)
    for query in ("label=team%3Dnlp", "name=llama-ft-3"):
        status, answer = await api.call("GET", f"/v1/jobs?{query}")
        assert status == 403, answer  # a filter would tell what the redaction hides
        assert "cannot filter by them" in answer["detail"]


async def test_bad_names_and_labels_are_refused_naming_them(
    coordinator: CoordinatorProcess, cleanup: list[Any], tmp_path: Path
) -> None:
    token = coordinator.add_enterprise(3)

    def submit(*flags: str) -> str:
        return refused(_cli(coordinator, token, tmp_path, "job", "submit", *JOB, *flags), 1)

    assert submit("--label", "Team Name=nlp").startswith(
        "--label: expected a label key: an optional DNS prefix and '/', then 1 to 63 letters"
    )
    assert submit("--label", "Team Name=nlp").endswith('got "Team Name"')
    detail = submit("--label", "team=natural language")
    assert (
        detail.startswith("--label team: expected a label value") and "natural language" in detail
    )
    assert submit("--label", "team=" + "x" * 64).startswith("--label team: expected a label value")
    many = [flag for n in range(33) for flag in ("--label", f"k{n}=v")]
    assert submit(*many) == "--label: expected a map of at most 32 entries, got a JSON object"
    assert submit("--name=-dash-first").startswith("--name: expected 1 to 63 letters")
    assert submit("--name", "n" * 64).startswith("--name: expected 1 to 63 letters")
    assert refused(
        _cli(coordinator, token, tmp_path, "job", "submit", *JOB, "--label", "team")
    ) == ("--label: 'team' is not KEY=VALUE")
    assert refused(
        _cli(coordinator, token, tmp_path, "job", "list", "--label", "team=a b"), 1
    ).startswith("label 'team=a b': expected a label value")
    assert refused(_cli(coordinator, token, tmp_path, "job", "list", "--label", "t=a,b")) == (
        "--label t=a,b: a label holds no comma"
    )
    jobs = ok(_cli(coordinator, token, tmp_path, "--json", "job", "list")).json()["jobs"]
    assert jobs == []  # nothing refused was kept
