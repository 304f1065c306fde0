"""The unit parsers' properties: exact integer arithmetic, round trips, and refusals that are
always a `UnitError` sentence (never another exception, never a guess)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.client.units import (
    DURATION_UNITS,
    SIZE_UNITS,
    UnitError,
    format_duration,
    format_exact_size,
    parse_duration,
    parse_size,
)

WHOLE = st.integers(min_value=1, max_value=10**9)
FRACTION = st.text(alphabet="0123456789", min_size=1, max_size=6)


@given(WHOLE, st.sampled_from(sorted(u for u in SIZE_UNITS if u)), st.booleans())
def test_a_whole_size_in_any_unit_and_case_is_exact(n: int, unit: str, upper: bool) -> None:
    typed = f"{n}{unit.upper() if upper else unit}"
    assert parse_size(typed) == n * SIZE_UNITS[unit]


def test_a_bare_letter_is_binary_as_docker_reads_it_and_b_without_i_is_decimal() -> None:
    assert parse_size("64G") == parse_size("64g") == parse_size("64GiB") == 64 << 30
    assert parse_size("64Gi") == 64 << 30 and parse_size("64GB") == 64 * 10**9


@given(st.integers(min_value=0, max_value=10**6), FRACTION, st.sampled_from(["GiB", "G", "MB"]))
def test_a_decimal_size_is_exact_or_refused(whole: int, fraction: str, unit: str) -> None:
    exact = Fraction(f"{whole}.{fraction}") * SIZE_UNITS[unit.lower()]
    typed = f"{whole}.{fraction}{unit}"
    if exact.denominator == 1 and exact > 0:
        assert parse_size(typed) == exact
    else:
        with pytest.raises(UnitError):
            parse_size(typed)


@given(st.integers(min_value=1, max_value=10**12))
def test_an_exact_size_shown_reads_back(size: int) -> None:
    assert parse_size(format_exact_size(size).replace(" ", "")) == size


@given(st.integers(min_value=1, max_value=10**10))
def test_a_duration_shown_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**6), FRACTION, st.sampled_from(list(DURATION_UNITS)))
def test_a_decimal_duration_is_exact_or_refused(whole: int, fraction: str, unit: str) -> None:
    exact = Fraction(f"{whole}.{fraction}") * DURATION_UNITS[unit]
    typed = f"{whole}.{fraction}{unit}"
    if exact.denominator == 1 and exact > 0:
        assert parse_duration(typed) == exact
    else:
        with pytest.raises(UnitError):
            parse_duration(typed)


@given(
    st.integers(min_value=0, max_value=10**5),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
)
def test_slurm_clock_forms(days: int, hours: int, minutes: int, seconds: int) -> None:
    total = days * 86_400 + hours * 3600 + minutes * 60 + seconds
    as_hours = days * 24 + hours
    cases = {
        f"{as_hours}:{minutes:02d}:{seconds:02d}": total,
        f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}": total,
        f"{days}-{hours}:{minutes:02d}": total - seconds,
        f"{days}-{hours}": total - seconds - minutes * 60,
        f"{as_hours * 60 + minutes}:{seconds:02d}": total,
    }
    for typed, expected in cases.items():
        if expected > 0:
            assert parse_duration(typed) == expected, typed
        else:
            with pytest.raises(UnitError, match="longer than zero"):
                parse_duration(typed)


@given(st.from_regex(r"[0-9]{1,30}(\.[0-9]{1,5})?", fullmatch=True))
def test_a_bare_number_is_never_taken_for_seconds(typed: str) -> None:
    with pytest.raises(UnitError, match=f"has no unit; add one: {typed}s, {typed}m"):
        parse_duration(typed)


@given(st.text(max_size=50))
def test_any_text_is_a_duration_or_a_sentence(typed: str) -> None:
    try:
        assert parse_duration(typed) > 0
    except UnitError as exc:
        assert str(exc) and "\n" not in str(exc)


@given(st.text(max_size=50))
def test_any_text_is_a_size_or_a_sentence(typed: str) -> None:
    try:
        assert parse_size(typed) > 0
    except UnitError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_huge_numbers_are_refused_by_length_not_computed() -> None:
    with pytest.raises(UnitError, match="longer than 40 characters"):
        parse_duration("9" * 5000 + "d")
    with pytest.raises(UnitError, match="longer than 40 characters"):
        parse_size("9" * 5000 + "G")
