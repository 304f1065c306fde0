"""A job's name and labels, as a Kubernetes user writes them: the declared types the API checks
them with, and the `key=value,key=value` selector `GET /v1/jobs?label=` filters by.

A name is 1 to 63 letters, digits, `.`, `_` or `-`, starting and ending with a letter or
digit: it fits a table column, a DNS label and a label value, so a job's name can be copied
into any of them. Label keys and values follow Kubernetes' rules (an optional DNS-subdomain
prefix and `/`, a name of at most 63 characters; a value of at most 63, possibly empty), so
labels carried over from a cluster's manifests are accepted as they are.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

MAX_LABELS = 32
MAX_NAME = 63
MAX_SELECTOR = 4096

_SEGMENT = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_PREFIX = rf"(?=[^/]{{1,253}}/){_DNS_LABEL}(?:\.{_DNS_LABEL})*/"
# (?!\n) keeps `$` from matching before a final newline, as fullmatch would not
NAME_PATTERN = rf"^{_SEGMENT}(?!\n)$"
KEY_PATTERN = rf"^(?:{_PREFIX})?{_SEGMENT}(?!\n)$"
VALUE_PATTERN = rf"^(?:{_SEGMENT})?(?!\n)$"
NAME_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
KEY_RULE = (
    "a label key: an optional DNS prefix and '/', then 1 to 63 letters, digits, '.', '_' or "
    "'-', starting and ending with a letter or digit"
)
VALUE_RULE = (
    "a label value: at most 63 letters, digits, '.', '_' or '-', starting and ending with a "
    "letter or digit"
)

JobName = Annotated[
    str,
    msgspec.Meta(
        pattern=NAME_PATTERN,
        description="the job's name, e.g. llama-finetune-3 (need not be unique)",
        extra={"expected": NAME_RULE},
    ),
]
LabelKey = Annotated[str, msgspec.Meta(pattern=KEY_PATTERN, extra={"expected": KEY_RULE})]
LabelValue = Annotated[str, msgspec.Meta(pattern=VALUE_PATTERN, extra={"expected": VALUE_RULE})]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    msgspec.Meta(
        max_length=MAX_LABELS,
        description=f'labels to find the job by, e.g. {{"team": "nlp"}} (at most {MAX_LABELS})',
    ),
]
Selector = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_SELECTOR,
        description="only jobs with all these labels: key=value[,key=value...]",
        extra={"expected": f"key=value[,key=value...] of at most {MAX_SELECTOR} characters"},
    ),
]

_KEY = re.compile(KEY_PATTERN)
_VALUE = re.compile(VALUE_PATTERN)


class BadSelector(ValueError):
    """A label selector that is not key=value[,key=value...] with valid keys and values."""


def parse_selector(text: str) -> dict[str, str]:
    """`team=nlp,stage=prod` as {"team": "nlp", "stage": "prod"}; a bad label is named."""
    wanted: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise BadSelector(f"label {part!r}: expected key=value")
        if not _KEY.search(key):
            raise BadSelector(f"label {part!r}: expected {KEY_RULE}, got key {key!r}")
        if not _VALUE.search(value):
            raise BadSelector(f"label {part!r}: expected {VALUE_RULE}, got {value!r}")
        if wanted.get(key, value) != value:
            raise BadSelector(f"label {key!r} is asked for with two values")
        wanted[key] = value
    if len(wanted) > MAX_LABELS:
        raise BadSelector(f"label: expected at most {MAX_LABELS} labels, got {len(wanted)}")
    return wanted


def matches(labels: dict[str, str] | tuple[tuple[str, str], ...], wanted: dict[str, str]) -> bool:
    """Whether a job with `labels` has every label of `wanted`."""
    have = dict(labels)
    return all(have.get(key) == value for key, value in wanted.items())
