"""The enterprise API: who may do what, validation, idempotency, the one error shape."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from coordinator_harness import Api, CoordinatorProcess
from databases import engine_params, new_database


@pytest.fixture(scope="module", params=engine_params())
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[CoordinatorProcess, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("jobs-api")
    process = CoordinatorProcess(workdir, database=new_database(request.param, workdir)).start()
    tokens = {
        "a": process.add_enterprise(1),
        "b": process.add_enterprise(2),
        "validation": process.add_enterprise(3),
        "auditor": process.admin_json("add-auditor", "--name", "City audit office")["token"],
    }
    try:
        yield process, tokens
    finally:
        process.stop()


@pytest.fixture
def coordinator(server: tuple[CoordinatorProcess, dict[str, str]]) -> CoordinatorProcess:
    return server[0]


@pytest.fixture
async def apis(server: tuple[CoordinatorProcess, dict[str, str]], cleanup: list) -> dict[str, Api]:
    process, tokens = server
    made = {name: Api(process.url, token) for name, token in tokens.items()}
    made["anonymous"] = Api(process.url, None)
    made["wrong"] = Api(process.url, "sk_ent_forged")
    cleanup.extend(made.values())
    return made


async def test_authorisation_matrix(apis: dict[str, Api]) -> None:
    status, job = await apis["a"].submit()
    assert status == 201
    job_id = job["id"]
    expectations = [
        ("anonymous", "GET", "/v1/jobs", 401),
        ("wrong", "GET", "/v1/jobs", 401),
        ("anonymous", "GET", "/v1/market", 401),
        ("anonymous", "GET", f"/v1/jobs/{job_id}", 401),
        ("auditor", "POST", "/v1/jobs", 403),
        ("auditor", "POST", f"/v1/jobs/{job_id}/cancel", 403),
        ("b", "GET", f"/v1/jobs/{job_id}", 404),
        ("b", "GET", f"/v1/jobs/{job_id}/logs", 404),
        ("b", "POST", f"/v1/jobs/{job_id}/cancel", 404),
        ("a", "GET", f"/v1/jobs/{job_id}", 200),
        ("auditor", "GET", f"/v1/jobs/{job_id}", 200),
        ("auditor", "GET", "/v1/market", 200),
    ]
    for who, method, path, expected in expectations:
        body = (
            {"image": "x", "gpus": 1, "max_duration_s": 1, "max_price_per_gpu_hour_micro_yuan": 1}
            if method == "POST"
            else None
        )
        status, answer = await apis[who].call(method, path, body)
        assert status == expected, (who, method, path, answer)
        if status >= 400:
            assert set(answer) == {"error", "detail"} and answer["detail"], answer
    assert (await apis["a"].job(job_id))["state"] == "pending", "a refused request changed state"
    _, listing = await apis["b"].call("GET", "/v1/jobs")
    assert job_id not in [j["id"] for j in listing["jobs"]]
    _, listing = await apis["auditor"].call("GET", "/v1/jobs")
    assert job_id in [j["id"] for j in listing["jobs"]]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpus": 0}, "gpus: expected an integer from 1 to 64, got 0"),
        ({"gpus": 1.5}, "gpus: expected an integer from 1 to 64"),
        ({"gpus": True}, "gpus: expected an integer from 1 to 64"),
        ({"image": "has space"}, "image: expected an image reference of 1 to 255 characters"),
        ({"image": ""}, "image: expected an image reference"),
        ({"command": "echo hi"}, "command: expected a list of at most 256 items"),
        ({"command": ["a\x00b"]}, "NUL"),
        (
            {"env": {"1BAD": "x"}},
            'env: expected letters, digits and _, not starting with a digit, got "1BAD"',
        ),
        ({"env": {"OK": 1}}, "env.OK: expected a string of at most 4096 characters"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"max_price_per_gpu_hour_micro_yuan": -5}, "max_price_per_gpu_hour_micro_yuan"),
        ({"max_price_per_gpu_hour_micro_yuan": 10**20}, "max_price_per_gpu_hour_micro_yuan"),
        ({"surprise": 1}, "surprise: unknown field"),
        ({"gpu_models": "H100"}, "gpu_models: expected a list of at most 16 items"),
        ({"memory_bytes": 1}, "memory_bytes"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
async def test_invalid_jobs_are_refused_naming_the_field(
    apis: dict[str, Api], fields: dict, message: str
) -> None:
    status, answer = await apis["validation"].submit(**fields)
    assert status == 422, answer
    assert message in answer["detail"]
    _, listing = await apis["validation"].call("GET", "/v1/jobs")
    assert listing["jobs"] == []


async def test_malformed_json_and_wrong_content_type(apis: dict[str, Api]) -> None:
    status, answer = await apis["a"].call(
        "POST", "/v1/jobs", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, answer["error"]) == (422, "invalid")
    status, answer = await apis["a"].call(
        "POST", "/v1/jobs", data=b"image=x", headers={"Content-Type": "text/plain"}
    )
    assert (status, answer["error"]) == (415, "unsupported_media_type")
    status, answer = await apis["a"].call("POST", "/v1/jobs", json_body=[1, 2])
    assert status == 422


async def test_idempotency_key_returns_the_first_job_and_refuses_other_fields(
    apis: dict[str, Api],
) -> None:
    status, first = await apis["a"].submit(idempotency_key="nightly-42")
    assert status == 201
    status, again = await apis["a"].submit(idempotency_key="nightly-42")
    assert (status, again["id"]) == (200, first["id"])
    status, header_retry = await apis["a"].call(
        "POST",
        "/v1/jobs",
        {
            "image": "busybox:latest",
            "command": ["true"],
            "gpus": 1,
            "max_duration_s": 600,
            "max_price_per_gpu_hour_micro_yuan": 10_000_000,
        },
        headers={"Idempotency-Key": "nightly-42"},
    )
    assert (status, header_retry["id"]) == (200, first["id"])
    status, conflict = await apis["a"].submit(idempotency_key="nightly-42", gpus=2)
    assert (status, conflict["error"]) == (409, "idempotency_conflict")
    status, other = await apis["b"].submit(idempotency_key="nightly-42")
    assert status == 201 and other["id"] != first["id"]


async def test_job_show_has_the_documented_fields(apis: dict[str, Api]) -> None:
    _, job = await apis["a"].submit()
    shown = await apis["a"].job(job["id"])
    for name in (
        "id",
        "state",
        "reason",
        "agent_id",
        "gpu_uuids",
        "price_per_gpu_hour_micro_yuan",
        "started_at_ms",
        "ended_at_ms",
        "exit_code",
    ):
        assert name in shown
    assert shown["state"] == "pending"


async def test_unknown_routes_and_methods_use_the_error_shape(
    coordinator: CoordinatorProcess,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(coordinator.url + "/v1/nothing") as response:
            assert response.status == 404
            assert set(await response.json()) == {"error", "detail"}
        async with session.delete(coordinator.url + "/v1/jobs") as response:
            assert response.status == 405
            assert (await response.json())["error"] == "method_not_allowed"


async def test_openapi_documents_every_route(coordinator: CoordinatorProcess) -> None:
    from coordinator.http.routes import ROUTES

    async with aiohttp.ClientSession() as session:
        async with session.get(coordinator.url + "/v1/openapi.json") as response:
            document = await response.json()
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    served = {(route.method, route.path) for route, _ in ROUTES}
    assert served - documented == set()
    assert documented - served == set()


async def test_metrics_expose_market_and_requests(
    coordinator: CoordinatorProcess, apis: dict[str, Api]
) -> None:
    await apis["b"].submit()
    async with aiohttp.ClientSession() as session:
        async with session.get(coordinator.url + "/metrics") as response:
            text = await response.text()
            assert response.headers["Content-Type"].startswith("text/plain")
    for name in (
        "suanli_agents_online",
        "suanli_pool_pflops_bf16",
        'suanli_jobs{state="pending"}',
        "suanli_auction_rounds_total",
        'route="/v1/jobs"',
        "suanli_http_request_seconds_bucket",
    ):
        assert name in text, name


async def test_healthz(coordinator: CoordinatorProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(coordinator.url + "/healthz") as response:
            assert (await response.json())["status"] == "ok"
