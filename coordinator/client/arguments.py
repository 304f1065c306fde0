"""The `suanli` command line's argument types: what people type, checked as argparse parses
it, each refusal a sentence argparse prefixes with the flag's name."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from coordinator.client.units import UnitError
from shared.errors import MoneyError
from shared.money import parse_yuan


def unit(parse: Callable[[str], int]) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            return parse(text)
        except UnitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def price(text: str) -> int:
    try:
        micro = parse_yuan(text, field="price")
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None
    if micro <= 0:
        raise argparse.ArgumentTypeError(f"price {text!r} must be more than 0 yuan")
    return micro


def positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above zero")
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
            raise argparse.ArgumentError(self, f"{values!r} is not NAME=VALUE")
        env = dict(getattr(namespace, self.dest, None) or {})
        if name in env:
            raise argparse.ArgumentError(self, f"{name} is given twice")
        env[name] = value
        setattr(namespace, self.dest, env)
