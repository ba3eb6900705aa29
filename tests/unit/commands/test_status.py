"""What `status` prints: short durations and one line per user, within the widths a terminal and a mail show; the
day's chart in --json; and `status` and `users` on a schema they cannot read."""

from __future__ import annotations

import json

import pytest

from emailsync.commands.status import MIN_TEXT, Column, _wrap, chart, render_user
from emailsync.errors import EXIT_CONFIG
from emailsync.store import schema
from emailsync.store.overview import UserRow
from emailsync.systemd.timespan import brief
from tests.conftest import AppDb, EmailSync


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


def add_run(app: AppDb, hours_ago: float, synced: int, outcome: str = "ok", host: str = "host-a") -> None:
    app.execute(
        f"INSERT INTO email_sync_runs (id, host, pid, started_at, finished_at, synced, outcome) "
        f"VALUES (:id, :host, 1, {app.at(-hours_ago * 3600)}, {app.at(-hours_ago * 3600 + 60)}, :synced, :outcome)",
        id=f"{host}-{hours_ago}",
        host=host,
        synced=synced,
        outcome=outcome,
    )


def test_status_json_carries_the_24_hour_chart_columns(app_db: AppDb, email_sync: EmailSync) -> None:
    add_run(app_db, 0.25, 7)
    add_run(app_db, 0.5 + 0.25, 3, "crashed")
    email_sync.configure(app_db, None)

    day = json.loads(email_sync("status", "--json").stdout)["day"]

    assert len(day) == 48
    assert day[-1] == {"runs": 1, "synced": 7, "failed": False}
    assert day[-2] == {"runs": 1, "synced": 3, "failed": True}
    assert all(column["runs"] == 0 for column in day[:-2])


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["users"], ["users", "--failing"]])
def test_status_and_users_before_migrate_exit_78_naming_migrate(
    command: list[str], app_db: AppDb, email_sync: EmailSync
) -> None:
    app_db.drop_our_tables()
    email_sync.configure(app_db, None)

    email_sync(*command).assert_one_clear_error(EXIT_CONFIG, "email-sync migrate")


def test_status_and_users_on_an_older_schema_exit_78_naming_migrate(app_db: AppDb, email_sync: EmailSync) -> None:
    app_db.drop_our_tables()
    schema.migrate(app_db.engine, target=1)
    email_sync.configure(app_db, None)

    email_sync("status").assert_one_clear_error(EXIT_CONFIG, "email-sync migrate")
    email_sync("users", "--parked").assert_one_clear_error(EXIT_CONFIG, "email-sync migrate")
