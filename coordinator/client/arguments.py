"""The `suanli` command line's argument types: what people type, checked as argparse parses
it, and refused in the words typed — `--max-duration: at most 30d (2592000 s)` — with the
limits the coordinator declares (`shared.messages.api.JobSubmit`) shown in the flag's units.

A refused value is one line and exit 2 (`FlagValueError`); argparse's usage block is kept for
what is wrong with the command itself: an unknown command or flag.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import msgspec.inspect as mi

from coordinator.client.units import (
    UnitError,
    format_cores,
    format_duration,
    format_exact_size,
    parse_cores,
    parse_duration,
    parse_size,
)
from shared.errors import MoneyError
from shared.messages.api import JobSubmit
from shared.money import format_money, parse_yuan


class UsageError(Exception):
    """The command line or the environment lacks something; nothing was sent."""


class CommandLineError(Exception):
    """The command line, a job file or the client's settings are wrong; nothing was sent
    (exit 2). The message is one sentence naming what was wrong as the user wrote it."""


class FlagValueError(CommandLineError):
    """A flag's value is refused: one sentence that starts with the flag as typed."""


class _Formatter(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped without breaking a flag's name at its hyphens."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


class Parser(argparse.ArgumentParser):
    """argparse, with a refused value raised as `FlagValueError` instead of printing the usage
    block; a wrong command (a positional such as COMMAND) keeps the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["exit_on_error"] = False
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            names = (err.argument_name or "").split("/")
            if not names[0].startswith("-"):
                self.error(str(err))
            flag = next((name for name in names if name.startswith("--")), names[0])
            raise FlagValueError(f"{flag}: {err.message}") from None


def _bounds(field: str) -> tuple[int, int]:
    """The least and most `field` of a job submission may be, as the coordinator declares."""
    info = mi.type_info(JobSubmit)
    assert isinstance(info, mi.StructType)
    found = next(f.type for f in info.fields if f.name == field)
    while isinstance(found, mi.Metadata):
        found = found.type
    assert isinstance(found, mi.IntType) and found.ge is not None and found.le is not None
    return found.ge, found.le


def _within(value: int, field: str, shown: Callable[[int], str]) -> int:
    low, high = _bounds(field)
    if value > high:
        raise argparse.ArgumentTypeError(f"at most {shown(high)}")
    if value < low:
        raise argparse.ArgumentTypeError(f"at least {shown(low)}")
    return value


def _units(parse: Callable[[str], int], text: str) -> int:
    try:
        return parse(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def unit(parse: Callable[[str], int]) -> Callable[[str], int]:
    """An argument type from a parser of `units`, with no limit of its own."""

    def convert(text: str) -> int:
        return _units(parse, text)

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def duration(field: str) -> Callable[[str], int]:
    """Seconds, within the limits of `field`, shown in days, hours, minutes and seconds."""

    def convert(text: str) -> int:
        return _within(
            _units(parse_duration, text), field, lambda s: f"{format_duration(s)} ({s} s)"
        )

    return convert


def size(field: str) -> Callable[[str], int]:
    """Bytes, within the limits of `field`, shown in binary units."""

    def convert(text: str) -> int:
        return _within(
            _units(parse_size, text), field, lambda b: f"{format_exact_size(b)} ({b} bytes)"
        )

    return convert


def cores(field: str) -> Callable[[str], int]:
    """Millicores, within the limits of `field`, shown in cores."""

    def convert(text: str) -> int:
        return _within(_units(parse_cores, text), field, lambda m: f"{format_cores(m)} cores")

    return convert


def count(field: str, noun: str) -> Callable[[str], int]:
    """A whole number within the limits of `field`."""

    def convert(text: str) -> int:
        return _within(positive_int(text), field, lambda n: f"{n} {noun}")

    return convert


def price(text: str) -> int:
    """Micro-yuan per GPU-hour from plain yuan ("12.50"), within a job's price limits."""
    try:
        micro = parse_yuan(text.strip(), field=f"price {text!r}")
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None
    if micro <= 0:
        raise argparse.ArgumentTypeError(f"price {text!r} must be more than ¥0")
    return _within(micro, "max_price_per_gpu_hour_micro_yuan", format_money)


def positive_int(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 40 or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number above zero")
    return int(text)


class EnvAction(argparse.Action):
    """`--env NAME=VALUE`, repeatable, each name at most once."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name, sep, value = str(values).partition("=")
        if not sep or not name:
            shown = "the value given" if "secret" in self.dest else repr(values)
            raise argparse.ArgumentError(self, f"{shown} is not NAME=VALUE")
        env = dict(getattr(namespace, self.dest, None) or {})
        if name in env:
            raise argparse.ArgumentError(self, f"{name} is given twice")
        env[name] = value
        setattr(namespace, self.dest, env)
