"""`suanli job submit -f job.toml`: a job's flags kept in a TOML file.

Every flag of `job submit` is a key, spelled as the flag without its dashes (`image`,
`gpus`, `max-duration`, `gpu-model`, `env`…), and `command` is the command after `--`. Values
are read exactly as the flag's would be: `max-duration = "1.5h"`, `memory = "64G"`,
`max-price-per-gpu-hour = "18.50"` (or 18.50: TOML numbers are read as typed, never as
floats). A repeatable flag takes a list (`gpu-model = ["H100", "A100"]`), `env` and
`secret-env` a table, a flag without a value true or false.

Flags given on the command line override the file: a list or a single value is replaced,
a table is merged name by name. An unknown key is refused, naming the key and the file. The
coordinator's refusal of the job is shown with its field named as the flag (`in_flag_words`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from coordinator.client import small_files
from coordinator.client.arguments import CommandLineError, EnvAction

MAX_FILE_BYTES = 1 << 20
# never read from a job file: the connection settings and what the client does after
# submitting are the user's, not the job's; and a key that names a file of credentials would
# let a job file someone hands you send your secrets to an agent of its choosing
NOT_KEYS = {
    "help",
    "coordinator",
    "token",
    "ca_file",
    "json",
    "profile",
    "job_file",
    "wait",
    "follow",
    "registry_auth",
    "secret_env_file",
    "dry_run",
}
FLAG_OF_FIELD = {
    "max_price_per_gpu_hour_micro_yuan": "--max-price-per-gpu-hour",
    "command": "the command after --",
}


@dataclass
class _Key:
    action: argparse.Action
    default: Any
    required: bool


@dataclass
class JobFileKeys:
    """The keys a job file may have, for one command's parser."""

    keys: dict[str, _Key] = field(default_factory=dict)

    def flag(self, key: str) -> str:
        action = self.keys[key].action
        return _long(action) if action.option_strings else FLAG_OF_FIELD["command"]


def _long(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def key_of(action: argparse.Action) -> str:
    return _long(action).removeprefix("--") if action.option_strings else "command"


def accept_job_file(parser: argparse.ArgumentParser) -> None:
    """Give `parser` a `-f/--file FILE` whose keys are its other flags. Their defaults and
    `required` move to `complete`, run after parsing, so that a value left unset on the
    command line can come from the file."""
    found = JobFileKeys()
    for action in parser._actions:
        if action.dest in NOT_KEYS or action.dest == argparse.SUPPRESS:
            continue
        # argparse calls a `*` positional without a default required, yet lets it be empty
        required = action.required and action.nargs != argparse.ZERO_OR_MORE
        found.keys[key_of(action)] = _Key(action, action.default, required)
        if required:
            action.help = f"{action.help} (required: here or in the job file)"
        action.required = False
        action.default = None
    parser.add_argument(
        "-f",
        "--file",
        dest="job_file",
        metavar="FILE",
        help="a TOML job file (- for stdin) whose keys are this command's flags without "
        'their dashes, e.g. image = "busybox", gpus = 8, max-duration = "2h", '
        'gpu-model = ["H100"], [env] NAME = "value", command = ["python", "train.py"]; '
        "flags given here override it",
    )
    parser.epilog = "job file keys: " + ", ".join(found.keys)
    parser.set_defaults(complete=partial(complete, found), job_file_keys=found)


def complete(found: JobFileKeys, args: argparse.Namespace) -> None:
    """Fill what the command line left unset from the job file, then the flags' defaults."""
    path = getattr(args, "job_file", None)
    values = load(path) if path else {}
    for key in values:
        if key not in found.keys:
            near = difflib.get_close_matches(key, list(found.keys), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise CommandLineError(
                f"{path}: unknown key {key!r}{hint}; the keys are {', '.join(found.keys)}"
            )
    missing = []
    for key, spec in found.keys.items():
        action = spec.action
        given = getattr(args, action.dest, None)
        from_file = _convert(f"{path}: {key}", values[key], action) if key in values else None
        if given is not None and given != []:
            if isinstance(action, EnvAction) and from_file:
                given = {**from_file, **given}
            setattr(args, action.dest, given)
        elif from_file is not None:
            setattr(args, action.dest, from_file)
        elif given == []:
            pass  # a `*` positional left empty: its own empty list
        else:
            default = spec.default
            setattr(args, action.dest, default.copy() if hasattr(default, "copy") else default)
            if spec.required:
                missing.append(found.flag(key))
    if missing:
        raise CommandLineError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: give "
            f"{'it' if len(missing) == 1 else 'them'} on the command line or in a job file (-f)"
        )


def load(path: str) -> dict[str, Any]:
    """The job file's table, read exactly (numbers as typed), at most 1 MiB."""
    try:
        text = small_files.read_text(path, MAX_FILE_BYTES, dash_is_stdin=True)
    except OSError as exc:
        raise CommandLineError(f"cannot read job file {path}: {exc.strerror or exc}") from None
    except small_files.TooLarge:
        raise CommandLineError(f"job file {path} is larger than {MAX_FILE_BYTES} bytes") from None
    except UnicodeDecodeError:
        raise CommandLineError(f"job file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text, parse_float=Decimal)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise CommandLineError(f"job file {path} is not valid TOML: {exc}") from None


def _text(where: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise CommandLineError(f"{where}: expected a string or a number, got {_kind(value)}")
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _value(where: str, text: str, action: argparse.Action) -> Any:
    convert = action.type
    try:
        value = convert(text) if callable(convert) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise CommandLineError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise CommandLineError(f"{where}: {text!r} is not one of {choices}")
    return value


def _convert(where: str, value: Any, action: argparse.Action) -> Any:
    """A file's value as the flag's own parsing makes it."""
    if isinstance(action, EnvAction):
        if not isinstance(value, dict):
            raise CommandLineError(
                f'{where}: expected a table of NAME = "value", got {_kind(value)}'
            )
        return {str(name): _text(f"{where}.{name}", item) for name, item in value.items()}
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise CommandLineError(f"{where}: expected true or false, got {_kind(value)}")
        return action.const if value else None
    if action.nargs == argparse.ZERO_OR_MORE and not isinstance(value, list):
        # one string would be one argument, "python train.py" a program of that name
        raise CommandLineError(f'{where}: expected a list, like ["python", "train.py"]')
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]
        return [
            _value(f"{where}[{i}]", _text(f"{where}[{i}]", v), action) for i, v in enumerate(items)
        ]
    return _value(where, _text(where, value), action)


def in_flag_words(detail: str, found: JobFileKeys) -> str:
    """The coordinator's refusal of a job's body with its field named as the flag:
    `env.A-B: expected letters…` → `--env A-B: expected letters…`."""
    where, sep, rest = detail.partition(": ")
    field_name = re.split(r"[.\[]", where, maxsplit=1)[0]
    if not sep or not field_name:
        return detail
    flag = FLAG_OF_FIELD.get(field_name)
    if flag is None:
        flag = next(
            (
                _long(spec.action)
                for spec in found.keys.values()
                if spec.action.dest == field_name and spec.action.option_strings
            ),
            None,
        )
    if flag is None:
        return detail
    inner = where[len(field_name) :].lstrip(".")
    index = re.fullmatch(r"\[(\d+)\]", inner)
    if index:
        inner = f"#{int(index[1]) + 1}"
    return f"{flag} {inner}: {rest}" if inner else f"{flag}: {rest}"
