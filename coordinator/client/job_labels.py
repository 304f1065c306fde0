"""A job's name and labels on the command line: `--name N` and `--label KEY=VALUE` for
`job submit` (and `job quote`), and the filters of `job list`. The coordinator checks their
form; the client only refuses what would change meaning on the way (a comma in a filter)."""

from __future__ import annotations

import argparse
from typing import Any

from coordinator.client.arguments import EnvAction, UsageError


class LabelAction(EnvAction):
    """`--label KEY=VALUE`, repeatable, each key at most once; a job file's `[label]` table
    (EnvAction's table form)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        key, sep, _ = str(values).partition("=")
        if not sep or not key:
            raise argparse.ArgumentError(self, f"{values!r} is not KEY=VALUE")
        super().__call__(parser, namespace, values, option_string)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`job submit`'s --name and --label."""
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="a name for the job, shown by job list and job show (1 to 63 letters, digits, "
        "., _ or -; need not be unique)",
    )
    parser.add_argument(
        "--label",
        action=LabelAction,
        metavar="KEY=VALUE",
        dest="labels",
        default={},
        help="a label to find the job by with job list --label (repeatable; Kubernetes' form)",
    )


def body_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The name and labels of a job's body, those given."""
    fields: dict[str, Any] = {}
    if args.name is not None:
        fields["name"] = args.name
    if args.labels:
        fields["labels"] = dict(args.labels)
    return fields


def add_filters(parser: argparse.ArgumentParser) -> None:
    """`job list`'s --name and --label filters (the coordinator filters)."""
    parser.add_argument("--name", metavar="NAME", help="only jobs of this name")
    parser.add_argument(
        "--label",
        action=LabelAction,
        metavar="KEY=VALUE",
        dest="labels",
        default={},
        help="only jobs with this label (repeatable: all must match)",
    )


def selector(labels: dict[str, str]) -> str | None:
    """The `label` query parameter: key=value,key=value."""
    for key, value in labels.items():
        if "," in key or "," in value:
            raise UsageError(f"--label {key}={value}: a label holds no comma")
    return ",".join(f"{key}={value}" for key, value in labels.items()) or None
