"""Registry credentials on the enterprise's side: `suanli registry login HOST`, which keeps them
in a plain Docker config.json at $XDG_CONFIG_HOME/suanli/registries.json (mode 0600), and the
credentials a job submission carries for its image's registry, from `--registry-auth FILE`
(any Docker config.json) or from that file."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import getpass
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from shared.image_refs import DOCKER_HUB, HUB_ALIASES, hostname, registry_host

EXIT_USAGE = 2


class RegistryLoginError(Exception):
    """A registry credentials file, or a login, is not usable; nothing was sent."""


def registries_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "suanli" / "registries.json"


def server_key(server: str) -> str:
    """A config.json `auths` key as a registry host: "https://index.docker.io/v1/" is docker.io,
    "https://registry.example:5000/v2/" is registry.example:5000."""
    text = server.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.split("/", 1)[0]
    return DOCKER_HUB if hostname(text) in HUB_ALIASES else text


def credentials_for(config: Any, host: str, source: str) -> dict[str, str] | None:
    """The credentials a Docker config.json holds for `host`, as a job submission carries them;
    None if it has none. A file that keeps them in a credential helper, or holds an identity
    token, is refused: suanli runs no helper and sends only a user name and password."""
    if not isinstance(config, dict):
        raise RegistryLoginError(f"{source} is not a Docker config.json (no JSON object)")
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryLoginError(f"{source}: auths must be a JSON object")
    for server, entry in auths.items():
        if server_key(str(server)) == host and isinstance(entry, dict):
            username, password = _user_and_password(entry, host, source)
            if username and password:
                return {"username": username, "password": password, "serveraddress": host}
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper or config.get("credsStore")
    if helper:
        raise RegistryLoginError(
            f"{source} keeps the credentials for {host} in the credential helper "
            f"docker-credential-{helper}, which suanli does not run; use "
            f"`suanli registry login {host}` instead"
        )
    return None


def _user_and_password(entry: dict[str, Any], host: str, source: str) -> tuple[str, str]:
    if entry.get("identitytoken") and not entry.get("auth"):
        raise RegistryLoginError(
            f"{source} holds an identity token for {host}, which suanli cannot pass on; "
            f"use `suanli registry login {host}` with a user name and password or access token"
        )
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryLoginError(
                f"{source}: the auth of {host} is not base64 of user:password"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise RegistryLoginError(f"{source}: the auth of {host} is not base64 of user:password")
        return username, password
    return str(entry.get("username") or ""), str(entry.get("password") or "")


def _read_config(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryLoginError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryLoginError(f"{what} {path} cannot be read: {exc}") from None
    except ValueError as exc:
        raise RegistryLoginError(f"{what} {path} is not JSON: {exc}") from None


SAVED = "saved"


def auth_for_image(image: str, registry_auth: str | None) -> dict[str, str] | None:
    """The credentials a submission of `image` carries: none unless asked for, since they go to
    whichever agent wins the job; with `--registry-auth saved`, those `suanli registry login`
    saved for the image's registry; with `--registry-auth FILE`, that Docker config's entry for
    it. Either is refused when it has none for that registry."""
    if registry_auth is None:
        return None
    host = registry_host(image)
    if registry_auth == SAVED:
        path, what = registries_path(), "the saved registry logins"
        config = _read_config(path, what) if path.exists() else {}
        found = credentials_for(config, host, str(path))
        if found is None:
            raise RegistryLoginError(
                f"--registry-auth saved: no login saved for {host}, the registry of image "
                f"{image} (suanli registry login {host})"
            )
        return found
    path = Path(registry_auth)
    found = credentials_for(_read_config(path, "--registry-auth"), host, str(path))
    if found is None:
        raise RegistryLoginError(
            f"--registry-auth {path} has no credentials for {host}, the registry of image {image}"
        )
    return found


def save_login(host: str, username: str, password: str, path: Path | None = None) -> Path:
    """Keep the credentials for `host` in the registries file (0600, in a 0700 directory)."""
    path = path or registries_path()
    config = _read_config(path, "the saved registry logins") if path.exists() else {}
    if not isinstance(config, dict):
        config = {}
    auths = config.setdefault("auths", {})
    for server in [s for s in auths if server_key(s) == host]:
        del auths[server]
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write_private(path, config)
    return path


def forget_login(host: str, path: Path | None = None) -> bool:
    path = path or registries_path()
    if not path.exists():
        return False
    config = _read_config(path, "the saved registry logins")
    auths = config.get("auths", {}) if isinstance(config, dict) else {}
    gone = [s for s in auths if server_key(s) == host]
    for server in gone:
        del auths[server]
    if gone:
        _write_private(path, config)
    return bool(gone)


def _write_private(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".registries-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:  # mkstemp makes it 0600
            json.dump(config, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# -- the command ------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """`suanli registry login|logout HOST`: local, nothing goes to the coordinator."""
    registry = commands.add_parser(
        "registry",
        help="save credentials for a private registry, used by jobs whose image is on it",
        description="Save or forget credentials for a private registry. A job whose image is "
        f"on a saved registry carries them (see `job submit --registry-auth`); they are kept "
        f"in {registries_path()} (a Docker config.json, mode 0600).",
    )
    registry.set_defaults(help_parser=registry)
    actions = registry.add_subparsers(dest="action", metavar="ACTION")
    login = actions.add_parser(
        "login", help="save credentials for HOST", description="Save credentials for HOST."
    )
    login.add_argument("host", metavar="HOST", help="the registry, e.g. registry.example:5000")
    login.add_argument("--username", "-u", help="user name (asked for when not given)")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password or access token from stdin (else it is asked for)",
    )
    login.set_defaults(run=None, local=cmd_login)
    logout = actions.add_parser(
        "logout", help="forget the credentials for HOST", description="Forget them."
    )
    logout.add_argument("host", metavar="HOST")
    logout.set_defaults(run=None, local=cmd_logout)


def run_local(args: argparse.Namespace) -> int:
    try:
        return int(args.local(args))
    except RegistryLoginError as exc:
        print(f"suanli: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_login(args: argparse.Namespace) -> int:
    host = server_key(args.host)
    username = args.username or input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise RegistryLoginError(f"a user name and a password are needed to log in to {host}")
    path = save_login(host, username, password)
    print(f"credentials for {host} saved in {path}; jobs whose image is on {host} carry them")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    host = server_key(args.host)
    if forget_login(host):
        print(f"credentials for {host} forgotten")
    else:
        print(f"no credentials were saved for {host}")
    return 0
