"""A private image end to end: a real registry (htpasswd auth, TLS under a CA the test makes),
the `suanli` command, a coordinator, `suanli-agent run` and each container engine.

The image is pushed with credentials, then jobs pull it: with the right password it runs; with
a wrong one the job fails as its own fault in the registry's words; without credentials the
host's cache does not hand it over. Neither password appears anywhere but sealed: not in the
coordinator's database, its log, the agent's log or spool, or any answer of the API.

Each engine trusts the registry's CA in its own configuration only, and the test shows each
checks it: Podman refuses the push until its certs.d has the CA, and a dockerd started without
the CA in its SSL_CERT_FILE refuses the pull.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import databases
import pytest
from agent_harness import AGENT_SETTINGS, AgentProcess
from aiohttp import web
from coordinator_harness import (
    BIN,
    UNHURRIED_SETTINGS,
    Api,
    CoordinatorProcess,
    clean_env,
    free_port,
)
from engines import BUSYBOX_IMAGE, KINDS, EngineService, busybox_rootfs, serve
from fake_nvml.fixture import FakeGpu
from registry_server import PASSWORD, USERNAME, Registry, serve_registry

WRONG_PASSWORD = "wrong-pw-3b8e1d77c2"
GPUS = [
    FakeGpu(uuid="GPU-5e1c0a00-0000-4000-8000-000000000001", power_mw=300_000),
    FakeGpu(uuid="GPU-5e1c0a00-0000-4000-8000-000000000002", power_mw=300_000),
]
SECRET_FILE_TEXT = "model weights only the owner may read 6d1f"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from serve_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def trusting_docker(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineService]:
    """A dockerd of the test's own that trusts the registry's CA (and the system's)."""
    bundle = registry.ca_bundle(tmp_path_factory.mktemp("docker-trust"))
    yield from serve("docker", {"SSL_CERT_FILE": str(bundle)})


@pytest.fixture(params=KINDS)
def engine_service(request: pytest.FixtureRequest) -> EngineService:
    """Each engine, trusting the registry's CA in its own configuration only."""
    name = "trusting_docker" if request.param == "docker" else "podman_service"
    service = request.getfixturevalue(name)
    assert isinstance(service, EngineService)
    return service


async def _engine(
    service: EngineService, method: str, path: str, auth: dict[str, str] | None = None
) -> tuple[int, str]:
    headers = {}
    if auth is not None:
        headers["X-Registry-Auth"] = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
    connector = aiohttp.UnixConnector(path=str(service.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(
            method,
            f"http://engine/v1.41{path}",
            headers=headers,
            timeout=aiohttp.ClientTimeout(120),
        ) as response:
            return response.status, await response.text()


async def _push_private_image(
    service: EngineService, registry: Registry, name: str, content: bytes | None = None
) -> str:
    """Tag the test's busybox (or import `content`, a root filesystem tarball) as a private
    image, push it with credentials, drop the tag."""
    image = f"{registry.host}/team/{name}"
    if content is not None:
        service.import_image(f"{image}:1", content)
    else:
        status, body = await _engine(
            service,
            "POST",
            f"/images/{urllib.parse.quote(BUSYBOX_IMAGE, safe='')}/tag?repo={image}&tag=1",
        )
        assert status in (200, 201), body
    if service.kind == "podman" and not registry.trusted_by(service):
        # Podman checks the registry's certificate: refused until its own certs.d trusts the CA
        _, body = await _engine(service, "POST", f"/images/{image}/push?tag=1", registry.auth())
        assert "certificate" in body or "x509" in body, body
        registry.trust_in_podman(service)
    _, body = await _engine(service, "POST", f"/images/{image}/push?tag=1", registry.auth())
    assert '"error"' not in body, body
    assert registry.status(f"/v2/team/{name}/manifests/1", PASSWORD) == 200
    status, body = await _engine(service, "DELETE", f"/images/{image}:1")
    assert status == 200, body
    return f"{image}:1"


class Stack:
    def __init__(
        self, coordinator: CoordinatorProcess, agent: AgentProcess, api: Api, token: str
    ) -> None:
        self.coordinator, self.agent, self.api, self.token = coordinator, agent, api, token
        self.answers: list[str] = []

    def suanli(
        self, *args: str, config_home: Path, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **clean_env(),
            "SUANLI_COORDINATOR": self.coordinator.url,
            "SUANLI_TOKEN": token or self.token,
            "XDG_CONFIG_HOME": str(config_home),
        }
        result = subprocess.run(
            [BIN / "suanli", *args], capture_output=True, text=True, env=env, timeout=60
        )
        self.answers.append(result.stdout + result.stderr)
        return result

    async def submit(
        self,
        image: str,
        config_home: Path,
        *flags: str,
        command: str = "echo the private image ran",
        token: str | None = None,
    ) -> str:
        result = self.suanli(
            "job",
            "submit",
            "--image",
            image,
            "--gpus",
            "1",
            "--max-duration",
            "10m",
            "--max-price-per-gpu-hour",
            "10",
            *flags,
            "--",
            "sh",
            "-c",
            command,
            config_home=config_home,
            token=token,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    async def ended(self, job_id: str) -> dict[str, Any]:
        try:
            job = await self.api.wait_for(
                job_id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"), 60
            )
        except AssertionError as timed_out:
            raise AssertionError(self.agent.log()[-4000:]) from timed_out
        status, page = await self.api.call("GET", f"/v1/jobs/{job_id}/logs")
        _, listing = await self.api.call("GET", "/v1/jobs")
        self.answers += [json.dumps(job), json.dumps(page), json.dumps(listing)]
        job["log"] = page.get("data", "")
        return job


@pytest.fixture
async def stack(
    tmp_path: Path, engine_service: EngineService, registry: Registry, cleanup: list[Any]
) -> AsyncIterator[Stack]:
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(tmp_path / "coordinator", settings=dict(UNHURRIED_SETTINGS))
    coordinator.start()
    settings = {
        **AGENT_SETTINGS,
        "registry_refuse_private": False,  # the test's registries are on loopback
    }
    agent = AgentProcess(
        tmp_path / "agent", coordinator, engine_service.socket, GPUS, settings=settings
    )
    agent.workdir.mkdir()
    agent.enroll()
    agent.start()
    token = coordinator.add_enterprise(5)
    api = Api(coordinator.url, token)
    cleanup.append(api)
    deadline = time.monotonic() + 20
    while True:
        _, market = await api.call("GET", "/v1/market")
        if market.get("models") and market["models"][0]["free"] == len(GPUS):
            break
        assert time.monotonic() < deadline, "the agent's GPU never reached the market"
        await asyncio.sleep(0.2)
    try:
        yield Stack(coordinator, agent, api, token)
    finally:
        agent.stop()
        coordinator.stop()
        for container in engine_service.containers_of(agent.agent_id):
            engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def test_a_private_image_runs_with_its_credentials_and_only_with_them(
    stack: Stack,
    engine_service: EngineService,
    registry: Registry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    image = await _push_private_image(engine_service, registry, f"private-{engine_service.kind}")
    if engine_service.kind == "docker" and registry.verified_by_docker:
        # off loopback dockerd checks the certificate: one that does not trust the CA refuses
        untrusting: EngineService = request.getfixturevalue("docker_service")
        repo, _, tag = image.rpartition(":")
        _, body = await _engine(
            untrusting, "POST", f"/images/create?fromImage={repo}&tag={tag}", registry.auth()
        )
        assert "certificate signed by unknown authority" in body, body
    config_home = tmp_path / "config"

    # the right password, from a Docker config.json given to `job submit --registry-auth`
    docker_config = tmp_path / "docker-config.json"
    docker_config.write_text(
        json.dumps(
            {
                "auths": {
                    f"https://{registry.host}": {
                        "auth": base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                    },
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:hub").decode()},
                }
            }
        )
    )
    job = await stack.ended(
        await stack.submit(image, config_home, "--registry-auth", str(docker_config))
    )
    assert (job["state"], job["exit_code"]) == ("succeeded", 0), job
    assert "the private image ran" in job["log"], job["log"]
    assert job["spec"]["registry_auth"] is True
    shown = stack.suanli("job", "show", job["id"], config_home=config_home).stdout
    assert "registry auth" in shown
    # the image left the host with its lease; the engine's own image stays
    assert not await _image_exists(engine_service, image)
    assert await _image_exists(engine_service, BUSYBOX_IMAGE)

    # a wrong password, saved by `suanli registry login`
    login = _login(stack, registry, config_home)
    assert login.returncode == 0, login.stderr
    failed = await stack.ended(await stack.submit(image, config_home, "--registry-auth", "saved"))
    assert (failed["state"], failed["reason"]) == ("failed", "registry_auth_refused"), failed
    assert failed["reason_detail"] == (
        f"registry {registry.host} refused the credentials given for image {image}: "
        "unauthorized: authentication required"
    )
    assert failed["attempts"] == 0, "the job's own fault: never requeued"

    # no credentials: the host's cache does not hand the private image over
    stack.suanli("registry", "logout", registry.host, config_home=config_home)
    anonymous = await stack.ended(await stack.submit(image, config_home))
    # (on a loopback registry, dockerd refused over TLS retries over plain HTTP and says so)
    assert anonymous["state"] == "failed", anonymous
    assert anonymous["reason"] in ("image_not_found", "image_pull_failed"), anonymous

    assert stack.coordinator.rows("SELECT COUNT(*) FROM job_secrets") == [(0,)]
    stack.agent.stop()
    stack.coordinator.stop()
    places = {
        "the coordinator's database": databases.dump(stack.coordinator.db),
        "the coordinator's database files": "".join(
            path.read_bytes().decode("latin-1")
            for path in Path(stack.coordinator.db).parent.glob("coordinator.db*")
        ),
        "the coordinator's log": stack.coordinator.log(),
        "the agent's log": stack.agent.log(),
        "the agent's spool": (stack.agent.state_dir / "spool.db").read_bytes().decode("latin-1"),
        "the API's and the command's answers": "\n".join(stack.answers),
    }
    for place, text in places.items():
        for secret in (PASSWORD, WRONG_PASSWORD):
            assert secret not in text, f"{secret} found in {place}"
            assert base64.b64encode(f"{USERNAME}:{secret}".encode()).decode() not in text


async def test_a_private_image_on_the_host_is_no_other_tenants_while_its_lease_runs(
    stack: Stack, engine_service: EngineService, registry: Registry, tmp_path: Path
) -> None:
    image = await _push_private_image(
        engine_service, registry, f"weights-{engine_service.kind}", content=_image_with_secret()
    )
    config_home = tmp_path / "config"
    docker_config = tmp_path / "docker-config.json"
    login = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    owner_job = await stack.submit(
        image,
        config_home,
        "--registry-auth",
        str(docker_config),
        command="cat /secret.txt; sleep 120",
    )
    await stack.api.wait_for(owner_job, lambda j: j["state"] == "running", 60)
    image_id = await _image_id(engine_service, image)
    assert image_id is not None, "the owner's lease pulled the image"

    # another enterprise names the cached image by its tag and by its content ID
    rival_token = stack.coordinator.add_enterprise(6)
    rival = Api(stack.coordinator.url, rival_token)
    try:
        for ref in (image, image_id):
            job_id = await stack.submit(
                ref, config_home, command="cat /secret.txt", token=rival_token
            )
            ended = await rival.wait_for(
                job_id, lambda j: j["state"] in ("succeeded", "failed"), 60
            )
            assert ended["state"] == "failed", ended
            assert ended["reason"] in ("image_not_found", "image_pull_failed", "registry_refused")
            _, page = await rival.call("GET", f"/v1/jobs/{job_id}/logs")
            assert SECRET_FILE_TEXT not in page.get("data", ""), page
    finally:
        await rival.close()
    assert await _image_id(engine_service, image) == image_id, "the owner's image stays"

    cancelled = stack.suanli("job", "cancel", owner_job, config_home=config_home)
    assert cancelled.returncode == 0, cancelled.stderr
    owner = await stack.ended(owner_job)
    assert SECRET_FILE_TEXT in owner["log"], "the owner's job read its own image"
    deadline = time.monotonic() + 30
    while await _image_id(engine_service, image_id) is not None:
        assert time.monotonic() < deadline, "the private image stayed on the host"
        await asyncio.sleep(0.2)
    assert await _image_exists(engine_service, BUSYBOX_IMAGE)


async def test_a_registry_naming_a_private_images_content_gets_no_container_of_it(
    stack: Stack, engine_service: EngineService, registry: Registry, tmp_path: Path
) -> None:
    """Knowing a private image's ID, a rival serves a manifest naming that content from an
    anonymous registry of its own: the engine skips the download and tags the cached content
    with the rival's name. The agent creates containers by content ID after checking it, so the
    rival's job fails and never reads the image."""
    image = await _push_private_image(
        engine_service, registry, f"held-{engine_service.kind}", content=_image_with_secret()
    )
    config_home = tmp_path / "config"
    docker_config = tmp_path / "docker-config.json"
    login = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    owner_job = await stack.submit(
        image, config_home, "--registry-auth", str(docker_config), command="sleep 120"
    )
    await stack.api.wait_for(owner_job, lambda j: j["state"] == "running", 60)
    image_id = await _image_id(engine_service, image)
    assert image_id is not None
    async with _manifest_only_registry(image_id) as (port, seen):
        rival_token = stack.coordinator.add_enterprise(7)
        rival = Api(stack.coordinator.url, rival_token)
        try:
            job_id = await stack.submit(
                f"localhost:{port}/evil/x:1",
                config_home,
                command="cat /secret.txt",
                token=rival_token,
            )
            ended = await rival.wait_for(
                job_id, lambda j: j["state"] in ("succeeded", "failed"), 60
            )
            _, page = await rival.call("GET", f"/v1/jobs/{job_id}/logs")
        finally:
            await rival.close()
    if engine_service.kind == "docker":  # Podman asks a loopback registry over TLS only
        assert any("/manifests/" in line for line in seen), seen
    assert ended["state"] == "failed", (ended, page)
    assert SECRET_FILE_TEXT not in page.get("data", "")
    stack.suanli("job", "cancel", owner_job, config_home=config_home)


@contextlib.asynccontextmanager
async def _manifest_only_registry(config_digest: str) -> AsyncIterator[tuple[int, list[str]]]:
    """An anonymous registry serving one manifest whose config is `config_digest`, no blob."""
    manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1000,
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 1,
                    "digest": "sha256:" + "0" * 64,
                }
            ],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.path.rstrip("/") == "/v2":
            return web.Response(text="{}")
        if "/manifests/" in request.path:
            headers = {"Content-Type": manifest_type, "Docker-Content-Digest": digest}
            if request.method == "HEAD":
                headers["Content-Length"] = str(len(manifest))
                return web.Response(headers=headers)
            return web.Response(body=manifest, headers=headers)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, seen
    finally:
        await runner.cleanup()


def _image_with_secret() -> bytes:
    """The test's busybox with a file of its own, so that its content is on no host yet."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(busybox_rootfs()), mode="r") as source:
        with tarfile.open(fileobj=out, mode="w") as tar:
            for member in source.getmembers():
                tar.addfile(member, source.extractfile(member) if member.isfile() else None)
            data = (SECRET_FILE_TEXT + "\n").encode()
            entry = tarfile.TarInfo("secret.txt")
            entry.size, entry.mode = len(data), 0o644
            tar.addfile(entry, io.BytesIO(data))
    return out.getvalue()


async def _image_id(service: EngineService, ref: str) -> str | None:
    status, body = await _engine(
        service, "GET", f"/images/{urllib.parse.quote(ref, safe='/:')}/json"
    )
    return str(json.loads(body)["Id"]) if status == 200 else None


def _login(stack: Stack, registry: Registry, config_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "XDG_CONFIG_HOME": str(config_home)}
    result = subprocess.run(
        [BIN / "suanli", "registry", "login", registry.host, "-u", USERNAME, "--password-stdin"],
        input=WRONG_PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    stack.answers.append(result.stdout + result.stderr)
    return result


async def _image_exists(service: EngineService, image: str) -> bool:
    status, _ = await _engine(
        service, "GET", f"/images/{urllib.parse.quote(image, safe='/:')}/json"
    )
    return status == 200
