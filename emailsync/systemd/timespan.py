"""systemd's time spans ("90", "5min", "2h 30min", "1.5h", "1w"): the one parser for every duration we read.

Operators copy durations between the unit files and our config, so we accept exactly what systemd.time(7) does,
and give the same value: the loop below follows systemd's parse_time() (src/basic/time-util.c) step by step, in
integer microseconds, truncating fractions digit by digit as it does. tests/unit/systemd/test_timespan.py holds it
against `systemd-analyze timespan`.
"""

from __future__ import annotations

import re

USEC_PER_SEC = 1_000_000
_INFINITY = 2**64 - 1  # systemd's USEC_INFINITY: a span must stay below it
_LONG_MAX = 2**63 - 1  # strtoll()'s range
_MINUTE, _HOUR, _DAY = 60 * USEC_PER_SEC, 3600 * USEC_PER_SEC, 86400 * USEC_PER_SEC
UNITS = {
    "seconds": USEC_PER_SEC,
    "second": USEC_PER_SEC,
    "sec": USEC_PER_SEC,
    "s": USEC_PER_SEC,
    "minutes": _MINUTE,
    "minute": _MINUTE,
    "min": _MINUTE,
    "months": 2_629_800 * USEC_PER_SEC,  # 30.44 days
    "month": 2_629_800 * USEC_PER_SEC,
    "M": 2_629_800 * USEC_PER_SEC,
    "msec": 1000,
    "ms": 1000,
    "m": _MINUTE,
    "hours": _HOUR,
    "hour": _HOUR,
    "hr": _HOUR,
    "h": _HOUR,
    "days": _DAY,
    "day": _DAY,
    "d": _DAY,
    "weeks": 7 * _DAY,
    "week": 7 * _DAY,
    "w": 7 * _DAY,
    "years": 31_557_600 * USEC_PER_SEC,  # 365.25 days
    "year": 31_557_600 * USEC_PER_SEC,
    "y": 31_557_600 * USEC_PER_SEC,
    "usec": 1,
    "us": 1,
    "μs": 1,  # GREEK SMALL LETTER MU
    "µs": 1,  # MICRO SIGN
}
_WHITESPACE = " \t\n\r"  # systemd's WHITESPACE, skipped between parts
# The table's first suffix that starts the text wins; longest first gives the same choice ("msec" before "ms", "m").
_UNIT = re.compile("|".join(sorted(UNITS, key=len, reverse=True)))
# strtoll(): its own leading white space (C's isspace), a sign, decimal digits.
_INTEGER = re.compile(r"[ \t\n\r\v\f]*([+-]?)([0-9]+)")
_DIGITS = "0123456789"


def _skip(text: str, start: int, chars: str) -> int:
    """The index after the run of ``chars`` at ``start`` (C's p += strspn(p, chars))."""
    return len(text) - len(text[start:].lstrip(chars))


def parse(text: str, default_unit: int = USEC_PER_SEC) -> int:
    """Microseconds in a time span; a number without a unit counts in ``default_unit``. ValueError if invalid."""
    total, something, p = 0, False, 0
    while True:
        p = _skip(text, p, _WHITESPACE)
        if p == len(text):
            if not something:
                raise ValueError("empty time span")
            return total
        if text[p] == "-":
            raise ValueError("negative time span")
        integer = _INTEGER.match(text, p)
        if integer and integer[1] == "-":
            raise ValueError("negative time span")
        whole, end = (int(integer[2]), integer.end()) if integer else (0, p)
        fraction = text[end : end + 1] == "."
        if fraction:
            p = _skip(text, end + 1, _DIGITS)
        elif end == p:
            raise ValueError(f"no number at {text[p:]!r}")
        else:
            p = end
        spaced = _skip(text, p, _WHITESPACE)
        unit = _UNIT.match(text, spaced)
        multiplier, after = (UNITS[unit[0]], unit.end()) if unit else (default_unit, spaced)
        if after == p and p < len(text):
            raise ValueError(f"unknown unit at {text[p:]!r}")
        p = after
        if whole > _LONG_MAX or whole >= _INFINITY // multiplier or whole * multiplier >= _INFINITY - total:
            raise ValueError("time span out of range")
        total += whole * multiplier
        something = True
        if fraction:
            digits = text[end + 1 : _skip(text, end + 1, _DIGITS)]
            if not digits:
                raise ValueError("no digit after the decimal point")
            step = multiplier
            for digit in digits:
                step //= 10
                total += int(digit) * step
                if total >= _INFINITY:
                    raise ValueError("time span out of range")


def brief(seconds: float | None) -> str:
    """A short human duration: 45s, 12m, 3h05m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(abs(seconds))
    sign = "-" if seconds < 0 else ""
    if s < 120:
        return f"{sign}{s}s"
    if s < 7200:
        return f"{sign}{s // 60}m"
    if s < 172800:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d{s % 86400 // 3600:02d}h"
