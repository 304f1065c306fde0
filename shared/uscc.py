"""Unified Social Credit Codes (统一社会信用代码, GB 32100-2015), the company ids vouchers hang on.

One voucher entitlement per USCC, and self-dealing is judged by comparing them,
so a mistyped code must be refused at the door rather than become a second company.
Only the 18th (check) character is enforced; the organisation-code check of
positions 9..17 (GB 11714) is deliberately not, since GB 32100 lets position 17
be any of the 31 characters.
"""

from __future__ import annotations

from shared.errors import SuanliError

__all__ = ["ALPHABET", "LENGTH", "UsccError", "check_character", "validate_uscc"]

LENGTH = 18
ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE = {ch: value for value, ch in enumerate(ALPHABET)}
# Weight of position i (1-based) is 3**(i-1) mod 31; 3 is a primitive root of 31, so every
# weight is non-zero mod the prime 31 and any single substitution changes the check character.
_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_NEVER_USED = "IOSVZ"
_LOOKALIKE = {"I": "1", "O": "0", "S": "5", "Z": "2"}


class UsccError(SuanliError):
    """A string is not a valid Unified Social Credit Code."""

    code = "bad_uscc"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_characters(code: str, count: int) -> None:
    """Refuse the first of the first `count` characters that is outside the alphabet."""
    for position, ch in enumerate(code[:count], start=1):
        if ch in _VALUE:
            continue
        if "a" <= ch <= "z":
            raise UsccError(
                f"character {ch!r} at position {position} of the Unified Social Credit Code "
                f"is lower case; write the code in upper case"
            )
        if ch in _NEVER_USED:
            hint = f" (did you mean {_LOOKALIKE[ch]!r}?)" if ch in _LOOKALIKE else ""
            raise UsccError(
                f"character {ch!r} at position {position} of the Unified Social Credit Code "
                f"is not allowed: the letters I, O, S, V and Z are never used{hint}"
            )
        raise UsccError(
            f"character {ch!r} at position {position} of the Unified Social Credit Code "
            f"is not allowed: only digits and the upper-case letters A to Y other than "
            f"I, O, S, V and Z are used"
        )


def _expected_check(prefix: str) -> str:
    total = sum(
        _VALUE[ch] * weight for ch, weight in zip(prefix[: LENGTH - 1], _WEIGHTS, strict=True)
    )
    return ALPHABET[-total % 31]


def check_character(prefix: str) -> str:
    """The check character GB 32100-2015 puts after these 17 characters."""
    if not isinstance(prefix, str):
        raise UsccError(f"a USCC prefix must be text, not {type(prefix).__name__}")
    if len(prefix) != LENGTH - 1:
        raise UsccError(
            f"a USCC prefix has {LENGTH - 1} characters, but {prefix!r} has "
            f"{_plural(len(prefix), 'character')}"
        )
    _check_characters(prefix, LENGTH - 1)
    return _expected_check(prefix)


def validate_uscc(code: str) -> str:
    """Return the code without surrounding whitespace, or raise `UsccError` saying what is wrong.

    The code is not upper-cased on the caller's behalf: the stored code must be the
    one the company registered, so a lower-case code is refused with that advice.
    """
    if not isinstance(code, str):
        raise UsccError(f"a Unified Social Credit Code must be text, not {type(code).__name__}")
    code = code.strip()
    if len(code) != LENGTH:
        raise UsccError(
            f"a Unified Social Credit Code has {LENGTH} characters, but {code!r} has "
            f"{_plural(len(code), 'character')}"
        )
    _check_characters(code, LENGTH)
    expected = _expected_check(code)
    if code[-1] != expected:
        raise UsccError(
            f"the check character (position {LENGTH}) of the Unified Social Credit Code "
            f"{code!r} is {code[-1]!r} but should be {expected!r}; a character was probably "
            f"mistyped"
        )
    return code
