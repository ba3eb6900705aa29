"""What `status` prints: short durations and one line per user, within the widths a terminal and a mail show."""

from __future__ import annotations

import pytest

from emailsync.commands.status import MIN_TEXT, Column, _wrap, chart, render_user
from emailsync.store.overview import UserRow
from emailsync.systemd.timespan import brief


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (7199, "119m"),
        (7200, "2h00m"),
        (3 * 86400 + 3600, "3d01h"),
        (-90, "-90s"),
    ],
)
def test_duration_is_short_and_keeps_its_sign(seconds: float | None, shown: str) -> None:
    assert brief(seconds) == shown


def test_a_failing_user_line_shows_failures_retry_and_the_whole_error_on_one_line() -> None:
    line = render_user(UserRow("42", 3, 600.0, "HTTP 500:\n" + "x" * 200, None, None, None))

    assert line.startswith("42") and "x3" in line and "retry in 10m" in line
    assert line.endswith("HTTP 500: " + "x" * 200) and "\n" not in line


@pytest.mark.parametrize("width", [80, 40, 10])
def test_a_long_line_is_wrapped_under_itself_and_keeps_every_character(width: int) -> None:
    line = "  ! the last run failed: backend unreachable at http://127.0.0.1:9/health: " + "y" * 90

    wrapped = _wrap(line, width)

    assert wrapped[0].startswith("  ! the") and all(shown.startswith("    ") for shown in wrapped[1:])
    assert all(len(shown) <= max(width, 4 + MIN_TEXT) for shown in wrapped)
    assert "".join("".join(wrapped).split()) == "".join(line.split())


def test_a_leased_user_line_names_the_host_and_time_left() -> None:
    line = render_user(UserRow("7", 0, None, None, "0123456789abcdef", "host-a", 90.0))

    assert "leased by host-a run 01234567, 90s left" in line


def test_a_day_of_runs_that_synced_nobody_is_charted_low_with_a_key_that_says_so() -> None:
    line, key = chart([Column()] * 46 + [Column(2, 0, False), Column(1, 0, True)])

    assert line == "·" * 46 + "▁✘"
    assert key == "▁ nobody synced; ✘ a run failed; · no run"
