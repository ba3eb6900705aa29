"""Parsers of configuration values: what each accepts, and the words it refuses the rest with."""

from __future__ import annotations

from typing import Any

import pytest

from emailsync.config import values
from emailsync.config.values import duration as parse_duration


@pytest.mark.parametrize(("given", "parsed"), [([422, 410, 422], (410, 422)), ("410, 422", (410, 422)), ([], ())])
def test_quarantine_statuses_are_a_list_or_a_comma_separated_string(given: object, parsed: tuple[int, ...]) -> None:
    assert values.statuses(given) == parsed


@pytest.mark.parametrize("given", [[200], [600], "4xx", 422, [True]])
def test_anything_but_a_list_of_error_statuses_is_refused(given: object) -> None:
    with pytest.raises(values.Invalid, match="list of HTTP statuses from 400 to 599"):
        values.statuses(given)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        (" 5m ", 300.0),
        ("1h 30m", 5400.0),
        ("365d", 365 * 86400.0),
        ("5min", 300.0),
        ("30sec", 30.0),
        ("5 minutes", 300.0),
        ("1w", 7 * 86400.0),
        ("2h 30min", 9000.0),
        ("1 hour 30 minutes", 5400.0),
        ("1M", 365.25 / 12 * 86400),  # systemd: 30.44 days
        ("500us", 0.0005),
    ],
)
def test_parse_duration_accepts_systemd_style_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        0.0,
        "0s",
        "-5s",
        "",
        "soon",
        "5x",
        "m",
        "5mins",
        "5S",
        "5.s",
        "1y",
        "infinity",
        "1e3",
        "inf",
        "nan",
        float("inf"),
        float("nan"),
        True,
        None,
        [5],
        {"s": 5},
        "366d",
        10**400,
        "9" * 400,
    ],
)
def test_parse_duration_refuses_anything_else(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)
