"""The fleet's call budget on the embedded SQLite: untouched without backend.max_rate, and spacing the calls with it."""

from __future__ import annotations

from emailsync.store import db
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync


def test_a_fleet_without_max_rate_never_touches_the_budget(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(20)
    email_sync.configure(app_db, backend, backend={"max_rate": 0})

    assert email_sync("run").code == 0

    assert len(backend.sync_calls()) == 20
    assert app_db.scalar(f"SELECT count(*) FROM {db.BUDGET}") == 0


def test_the_budget_spaces_the_calls_on_sqlite_too(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(41)
    email_sync.configure(app_db, backend, backend={"concurrency": 4, "max_rate": 20})

    assert email_sync("run").code == 0

    # 41 calls at 20/s: the 41st starts no earlier than 2 s after the first; unlimited, they take milliseconds.
    arrivals = sorted(call.at for call in backend.sync_calls())
    assert len(arrivals) == 41
    assert arrivals[-1] - arrivals[0] >= 1.9
    assert app_db.scalar(f"SELECT count(*) FROM {db.BUDGET}") == 1


def test_a_cooldown_is_one_warning_however_many_calls_in_flight_were_told_to_wait(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """The four first calls are in flight together and each gets 503 with Retry-After: one cooldown, one line."""
    app_db.add_users(8)
    for number in (1, 2, 3, 4):
        backend.on_call(number, Behaviour(status=503, retry_after="1", delay=0.3))
    email_sync.configure(app_db, backend, backend={"concurrency": 4, "max_rate": 100, "retry_backoff_max": "5s"})

    result = email_sync("run")

    assert result.code == 0
    assert sorted(call.status for call in backend.sync_calls()).count(503) == 4
    assert [event["event"] for event in result.events].count("backend_cooldown") == 1
    assert app_db.synced_ids() == set(range(1, 9))
