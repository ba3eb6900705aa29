"""The log of whole runs: secrets never in it, a bounded number of lines for thousands of users, a line each at
debug. The log's format is tests/unit/systemd/test_logs.py's."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from emailsync.report.runlog import FAILURES_SHOWN, SAMPLES
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync


def test_a_run_never_logs_the_token_or_the_database_password(pg: AppDb, email_sync: EmailSync, tmp_path: Path) -> None:
    pg.add_users(3)
    token = tmp_path / "token"
    token.write_text("very-secret-token")
    token.chmod(0o600)
    password_url = pg.url.replace("postgres@", "postgres:db-pass-4321@")  # trust auth ignores the password
    with Backend(token="very-secret-token") as backend:
        # A backend that echoes what it got, token included, into its error body.
        backend.script(2, Behaviour(status=400, body=b'{"error": "bad request from Bearer very-secret-token"}'))
        email_sync.configure(pg, backend, database={"url": password_url}, backend={"token_file": str(token)})
        result = email_sync("run")

    assert result.code == 0, result.stdout
    assert "***" in pg.state(2).last_error
    tables = [list(map(str, row)) for row in pg.runs() + pg.rows("SELECT * FROM email_sync_user_state")]
    everything = result.stdout + result.stderr + json.dumps(tables)
    assert "very-secret-token" not in everything and "db-pass-4321" not in everything


def test_a_run_of_thousands_logs_its_start_its_end_and_a_bounded_number_of_lines_between(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """journald keeps a bounded number of lines per unit and interval: a run's lines do not grow with its users."""
    users = pg.add_users(1500)
    bad_request = {user for user in users if user % 10 == 0}  # more of each kind than are shown one by one
    broken = {user for user in users if user % 10 == 5}  # never enough in a row to open the circuit
    for user in bad_request:
        backend.script(user, Behaviour(status=400))
    for user in broken:
        backend.script(user, Behaviour(status=500))
    email_sync.configure(pg, backend)

    result = email_sync("run")

    assert result.code == 0, result.stdout
    names = Counter(event["event"] for event in result.events)
    assert names["cycle_started"] == names["cycle_finished"] == 1
    assert names["user_synced"] == 0 and names["user_failed"] == 2 * FAILURES_SHOWN
    assert set(names) <= {"cycle_started", "cycle_finished", "user_failed", "failures_summarized", "progress"}
    assert names["failures_summarized"] <= names["progress"] + 1
    finished = result.event("cycle_finished")
    assert (finished["synced"], finished["failed"]) == (1200, 300)
    summary = [event for event in result.events if event["event"] == "failures_summarized"][-1]
    assert summary["failed"] == {"user_error": 150, "server_error": 150}
    assert summary["not_shown"] == {"user_error": 150 - FAILURES_SHOWN, "server_error": 150 - FAILURES_SHOWN}
    shown = {event["user_id"] for event in result.events if event["event"] == "user_failed"}
    sampled = summary["sample_user_ids"]
    assert set(sampled["user_error"]) <= bad_request - shown and set(sampled["server_error"]) <= broken - shown
    assert len(sampled["user_error"]) == len(sampled["server_error"]) == SAMPLES
    assert pg.synced_ids() == set(users) - bad_request - broken


def test_at_debug_every_user_has_a_line(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    users = pg.add_users(FAILURES_SHOWN + 60)
    failing = set(users[: FAILURES_SHOWN + 10])
    for user in failing:
        backend.script(user, Behaviour(status=400))
    email_sync.configure(pg, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0, result.stdout
    synced = [event for event in result.events if event["event"] == "user_synced"]
    failed = [event for event in result.events if event["event"] == "user_failed"]
    assert {event["user_id"] for event in synced} == set(users) - failing and len(synced) == 50
    assert {event["user_id"] for event in failed} == failing and len(failed) == len(failing)
    assert Counter(event["level"] for event in failed) == {"warning": FAILURES_SHOWN, "debug": 10}
    assert {event["level"] for event in synced} == {"debug"}
