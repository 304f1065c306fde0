"""`suanli registry login` and `job submit --registry-auth`: which credentials a submission
carries, read from Docker config.json files, and the refusals in the user's words."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.client import registry_login
from coordinator.client.registry_login import (
    RegistryLoginError,
    auth_for_image,
    credentials_for,
    server_key,
)

SUANLI = Path(sys.executable).parent / "suanli"
IMAGE = "registry.example:5000/team/train:1"
HOST = "registry.example:5000"


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _config(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://Registry.Example:5000/v2/", HOST),
        ("registry.example:5000", HOST),
        ("http://10.0.0.7:5000", "10.0.0.7:5000"),
    ],
)
def test_config_keys_are_read_as_registry_hosts(key: str, host: str) -> None:
    assert server_key(key) == host


def test_only_the_images_registry_is_taken_from_a_config_file(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _auth("hub", "hub-pw")},
                f"https://{HOST}": {"auth": _auth("team", "pw:with:colons")},
                "other.example": {"username": "o", "password": "o-pw"},
            }
        },
    )
    assert auth_for_image(IMAGE, path) == {
        "username": "team",
        "password": "pw:with:colons",
        "serveraddress": HOST,
    }
    assert auth_for_image("python:3.12", path) == {
        "username": "hub",
        "password": "hub-pw",
        "serveraddress": "docker.io",
    }
    assert auth_for_image("other.example/x:1", path)["password"] == "o-pw"  # type: ignore[index]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"auths": {"other.example": {"auth": _auth("a", "b")}}}, f"has no credentials for {HOST}"),
        ({"auths": {}, "credsStore": "desktop"}, "docker-credential-desktop"),
        ({"credHelpers": {HOST: "ecr-login"}}, "docker-credential-ecr-login"),
        ({"auths": {HOST: {"identitytoken": "t"}}}, "identity token"),
        ({"auths": {HOST: {"auth": "not base64!"}}}, "not base64 of user:password"),
        ([], "not a Docker config.json"),
    ],
)
def test_a_file_without_usable_credentials_is_refused_naming_the_host(
    tmp_path: Path, config: Any, words: str
) -> None:
    with pytest.raises(RegistryLoginError, match=words):
        auth_for_image(IMAGE, _config(tmp_path, config))


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RegistryLoginError, match="does not exist"):
        auth_for_image(IMAGE, str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RegistryLoginError, match="is not JSON"):
        auth_for_image(IMAGE, str(tmp_path / "bad.json"))


def test_login_keeps_a_private_docker_config_that_submissions_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert auth_for_image(IMAGE, None) is None
    result = subprocess.run(
        [SUANLI, "registry", "login", f"https://{HOST}", "-u", "team", "--password-stdin"],
        input="first-pw\n",
        capture_output=True,
        text=True,
        env={"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "first-pw" not in result.stdout + result.stderr
    path = tmp_path / "config" / "suanli" / "registries.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert credentials_for(saved, HOST, "x") == {
        "username": "team",
        "password": "first-pw",
        "serveraddress": HOST,
    }
    registry_login.save_login(HOST, "team", "second-pw")
    # a saved login goes with a job only when asked for: whoever wins the job receives it
    assert auth_for_image(IMAGE, None) is None
    assert auth_for_image(IMAGE, "saved")["password"] == "second-pw"  # type: ignore[index]
    with pytest.raises(RegistryLoginError, match="no login saved for public.example"):
        auth_for_image("public.example/x:1", "saved")
    assert registry_login.forget_login(HOST)
    with pytest.raises(RegistryLoginError, match="no login saved"):
        auth_for_image(IMAGE, "saved")


def test_submit_refuses_a_file_without_the_images_registry_before_sending(
    tmp_path: Path,
) -> None:
    path = _config(tmp_path, {"auths": {"other.example": {"auth": _auth("a", "b")}}})
    result = subprocess.run(
        [
            SUANLI,
            "job",
            "submit",
            "--coordinator",
            "http://127.0.0.1:9",  # nothing listens: the refusal comes first
            "--token",
            "t",
            "--image",
            IMAGE,
            "--gpus",
            "1",
            "--max-duration",
            "1h",
            "--max-price-per-gpu-hour",
            "1",
            "--registry-auth",
            path,
        ],
        capture_output=True,
        text=True,
        env={"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"suanli: --registry-auth {path} has no credentials for {HOST}, the registry of image "
        f"{IMAGE}"
    )
