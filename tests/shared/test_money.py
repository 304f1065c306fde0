"""Money: exact yuan strings to integer micro-yuan and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import MoneyError
from shared.money import MAX_MICRO_YUAN, format_yuan, parse_yuan, usage_amount


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("0", 0),
        ("1000000000", 1_000_000_000_000_000),
        ("3.14", 3_140_000),
        ("0.10", 100_000),
        ("9223372036854.775807", MAX_MICRO_YUAN),
    ],
)
def test_parse(text: str, micro: int) -> None:
    assert parse_yuan(text) == micro


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0000001", "more than 6 decimals"),
        ("-1", "must not be negative"),
        ("NaN", "not a plain decimal"),
        ("nan", "not a plain decimal"),
        ("inf", "not a plain decimal"),
        ("-Infinity", "not a plain decimal"),
        ("1e3", "not a plain decimal"),
        ("1E-3", "not a plain decimal"),
        ("+1", "not a plain decimal"),
        (" 1", "not a plain decimal"),
        ("1 ", "not a plain decimal"),
        ("1.", "not a plain decimal"),
        (".5", "not a plain decimal"),
        ("1,5", "not a plain decimal"),
        ("1_000", "not a plain decimal"),
        ("０.５", "not a plain decimal"),
        ("", "not a plain decimal"),
        ("0x10", "not a plain decimal"),
        ("9223372036854.775808", "too large"),
        ("1" * 41, "longer than"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        parse_yuan(text)


@pytest.mark.parametrize("value", [12.5, 12, None, b"12"])
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(MoneyError, match="decimal string"):
        parse_yuan(value)  # type: ignore[arg-type]


def test_negative_when_allowed() -> None:
    assert parse_yuan("-0.5", allow_negative=True) == -500_000


def test_error_names_the_field() -> None:
    with pytest.raises(MoneyError, match="max price"):
        parse_yuan("abc", field="max price")


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.00"),
        (1, "0.000001"),
        (12_500_000, "12.50"),
        (100_000, "0.10"),
        (-1_230_000, "-1.23"),
        (1_234_567, "1.234567"),
    ],
)
def test_format(micro: int, text: str) -> None:
    assert format_yuan(micro) == text


@given(st.integers(min_value=-MAX_MICRO_YUAN, max_value=MAX_MICRO_YUAN))
def test_format_parse_round_trip(micro: int) -> None:
    assert parse_yuan(format_yuan(micro), allow_negative=True) == micro


@pytest.mark.parametrize(
    ("gpu_ms", "price", "amount"),
    [
        (3_600_000, 2_000_000, 2_000_000),
        (1, 3_599_999, 0),
        (1, 3_600_000, 1),
        (0, 10**12, 0),
        (8 * 3_600_000, 12_345_678, 8 * 12_345_678),
        (1_799_999, 1, 0),
    ],
)
def test_usage_amount_rounds_down(gpu_ms: int, price: int, amount: int) -> None:
    assert usage_amount(gpu_ms, price) == amount


@given(st.integers(0, 10**12), st.integers(0, 10**10))
def test_usage_amount_is_exact_floor(gpu_ms: int, price: int) -> None:
    amount = usage_amount(gpu_ms, price)
    assert amount * 3_600_000 <= gpu_ms * price < (amount + 1) * 3_600_000


def test_usage_amount_refuses_negatives() -> None:
    with pytest.raises(MoneyError):
        usage_amount(-1, 5)
