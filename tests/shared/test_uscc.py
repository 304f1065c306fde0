"""Unified Social Credit Code validation (GB 32100-2015 check character)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import SuanliError
from shared.uscc import ALPHABET, LENGTH, UsccError, check_character, validate_uscc

KNOWN_VALID = "91350100M000100Y43"

prefixes = st.text(alphabet=ALPHABET, min_size=LENGTH - 1, max_size=LENGTH - 1)


def make_code(prefix: str) -> str:
    return prefix + check_character(prefix)


def test_known_valid_code() -> None:
    assert validate_uscc(KNOWN_VALID) == KNOWN_VALID
    assert check_character(KNOWN_VALID[:17]) == "3"


def test_surrounding_whitespace_is_stripped() -> None:
    assert validate_uscc(f"  {KNOWN_VALID}\n") == KNOWN_VALID


@pytest.mark.parametrize(
    "prefix",
    ["91110000100000000", "00000000000000000", "YYYYYYYYYYYYYYYYY", "913100007178856Y9"],
)
def test_constructed_codes_validate(prefix: str) -> None:
    code = make_code(prefix)
    assert len(code) == LENGTH
    assert validate_uscc(code) == code


def test_all_zero_prefix_has_check_zero() -> None:
    assert check_character("0" * 17) == "0"


def test_error_is_a_suanli_error_with_a_code() -> None:
    with pytest.raises(SuanliError) as info:
        validate_uscc("123")
    assert info.value.code == "bad_uscc"
    assert info.value.as_body()["error"] == "bad_uscc"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("", "has 0 characters"),
        ("   ", "has 0 characters"),
        ("91350100M000100Y4", "has 17 characters"),
        ("9", "has 1 character"),
        ("91350100M000100Y433", "has 19 characters"),
        ("91350100m000100Y43", "lower case"),
        ("91350100m000100Y43", "position 9"),
        ("91350100M000100y43", "write the code in upper case"),
        ("9135010OM000100Y43", "'O' at position 8"),
        ("9135010OM000100Y43", "I, O, S, V and Z are never used"),
        ("91350100M000I00Y43", "'I' at position 13"),
        ("91350100M000100S43", "'S' at position 16"),
        ("91350100M000100V43", "'V' at position 16"),
        ("Z1350100M000100Y43", "'Z' at position 1"),
        ("91350100M000100Y4O", "'O' at position 18"),
        ("91350100M000100Y4-", "'-' at position 18"),
        ("91350100 000100Y43", "' ' at position 9"),
        ("９1350100M000100Y43", "position 1"),  # noqa: RUF001 (a full-width digit)
        ("91350100M000100Y44", "should be '3'"),
        ("91350100M000100Y44", "is '4'"),
        ("91350100M000100Y45", "check character (position 18)"),
        ("91350100M000100Y53", "should be"),
    ],
)
def test_bad_codes_are_refused_with_a_clear_sentence(code: str, expected: str) -> None:
    with pytest.raises(UsccError) as info:
        validate_uscc(code)
    assert expected in info.value.detail


def test_lookalike_hint() -> None:
    with pytest.raises(UsccError, match=r"did you mean '0'\?"):
        validate_uscc("9135010OM000100Y43")


@pytest.mark.parametrize("value", [None, 91350100, b"91350100M000100Y43"])
def test_non_text_is_refused(value: object) -> None:
    with pytest.raises(UsccError, match="must be text"):
        validate_uscc(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "9135", KNOWN_VALID, "91350100m000100Y4"])
def test_check_character_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(UsccError):
        check_character(prefix)


@given(prefixes)
def test_any_prefix_with_its_check_character_validates(prefix: str) -> None:
    code = make_code(prefix)
    assert validate_uscc(code) == code


@given(prefixes, st.integers(0, LENGTH - 1), st.integers(1, len(ALPHABET) - 1))
def test_a_single_substitution_is_always_detected(prefix: str, position: int, shift: int) -> None:
    code = make_code(prefix)
    replacement = ALPHABET[(ALPHABET.index(code[position]) + shift) % len(ALPHABET)]
    changed = code[:position] + replacement + code[position + 1 :]
    with pytest.raises(UsccError, match="check character"):
        validate_uscc(changed)


def test_every_single_substitution_of_the_known_code_is_detected() -> None:
    # Exhaustive for one code: 18 positions x 30 other characters.
    for position in range(LENGTH):
        for ch in ALPHABET:
            if ch == KNOWN_VALID[position]:
                continue
            changed = KNOWN_VALID[:position] + ch + KNOWN_VALID[position + 1 :]
            with pytest.raises(UsccError):
                validate_uscc(changed)
