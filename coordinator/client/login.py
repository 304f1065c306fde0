"""`suanli login`, and the profile every other command falls back on.

Each connection setting comes from its flag, else its environment variable, else the chosen
profile of the client's settings file (`--profile NAME`, else `SUANLI_PROFILE`, else
`default`). `login` checks the coordinator and token by asking who the token is, and only then
saves them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from coordinator.client import render
from coordinator.client.api import CoordinatorApi
from coordinator.client.arguments import CommandLineError
from coordinator.client.profiles import (
    Profile,
    chosen_profile,
    config_path,
    read_profiles,
    save_profile,
)

SETTINGS = {
    "coordinator": "SUANLI_COORDINATOR",
    "token": "SUANLI_TOKEN",
    "ca_file": "SUANLI_CA_FILE",
}


def _unset(args: argparse.Namespace, name: str) -> bool:
    return not getattr(args, name, None) and not os.environ.get(SETTINGS[name])


def use_profile(args: argparse.Namespace) -> None:
    """Fill the connection settings no flag or environment variable gives from the profile."""
    name, named = chosen_profile(getattr(args, "profile", None))
    if not named and not _unset(args, "coordinator") and not _unset(args, "token"):
        return  # both given: the settings file is not even read
    path = config_path()
    profiles = read_profiles(path)
    if name not in profiles:
        if named:
            raise CommandLineError(
                f"no profile {name!r} in {path}; `suanli login --profile {name}` makes it"
            )
        return
    profile = profiles[name]
    for setting in SETTINGS:
        if _unset(args, setting) and getattr(profile, setting):
            setattr(args, setting, getattr(profile, setting))


def prepare_login(args: argparse.Namespace) -> None:
    """A login's coordinator (from the flag, env, or the profile being replaced) and token
    (flag, env, else asked for: typed without echo, or one line on a piped stdin)."""
    name, _ = chosen_profile(getattr(args, "profile", None))
    args.profile_name = name
    old = read_profiles(config_path()).get(name, Profile())
    for setting in ("coordinator", "ca_file"):
        if _unset(args, setting) and getattr(old, setting):
            setattr(args, setting, getattr(old, setting))
    if _unset(args, "coordinator"):
        raise CommandLineError("login needs a coordinator: pass --coordinator URL")
    if _unset(args, "token"):
        args.token = _ask_token()
    for setting in SETTINGS:
        value = getattr(args, setting, None) or os.environ.get(SETTINGS[setting])
        if value is not None and (not value.isprintable() or len(value) > 4096):
            raise CommandLineError(
                f"the {setting.replace('_', ' ')} given to login is not printable text"
            )


def _ask_token() -> str:
    if sys.stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline(4097).strip()
    if not token:
        raise CommandLineError("login needs a token: pass --token T, set SUANLI_TOKEN or type it")
    return token


def _setting(args: argparse.Namespace, name: str) -> str | None:
    value: str | None = getattr(args, name, None) or os.environ.get(SETTINGS[name]) or None
    return value


async def cmd_login(api: CoordinatorApi, args: argparse.Namespace) -> int:
    account: dict[str, Any] = await api.account()  # the token works before it is kept
    path = config_path()
    profile = Profile(
        coordinator=_setting(args, "coordinator"),
        token=_setting(args, "token"),
        ca_file=_setting(args, "ca_file"),
    )
    save_profile(path, args.profile_name, profile)
    if args.json:
        render.print_json({"profile": args.profile_name, "config": str(path), "account": account})
    else:
        print(
            f"logged in to {profile.coordinator} as {account.get('role')} {account.get('id')}; "
            f"saved as profile {args.profile_name} in {path}"
        )
    return 0


def add_login(commands: Any, connection_options: Any) -> None:
    """The `login` command, beside the others of `commands`."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "login",
        help="check a coordinator and token and keep them in your settings, as a profile",
        description="Check the coordinator (--coordinator) and token (--token, "
        "SUANLI_TOKEN, else typed without echo or one line on stdin) by asking who the token "
        "is, then keep them in $XDG_CONFIG_HOME/suanli/config.toml (0600) as the profile "
        "named by --profile or "
        "SUANLI_PROFILE (default: default). Other commands use the profile for whatever "
        "no flag or environment variable gives.",
    )
    connection_options(parser, top=False)
    parser.set_defaults(run=cmd_login, prepare=prepare_login)
