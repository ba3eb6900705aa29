"""Quarantine: a user whose calls fail permanently sync.quarantine_after times in a row is parked by the run, one
alert names every user a run parked, `users --parked` lists them and `unpark` or `reset` returns them. Transient
failures only keep their backoff. Between runs, the tests end the backoff by hand so the user is due again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emailsync.errors import EXIT_OK
from emailsync.store import db
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync

GONE = Behaviour(status=422, body=b'{"error": "mailbox deleted"}')
DOWN = Behaviour(status=503)


def runs_after_each_backoff(pg: AppDb, email_sync: EmailSync, times: int) -> None:
    for _ in range(times):
        assert email_sync("run").code == EXIT_OK
        pg.execute(f"UPDATE {db.STATE} SET next_attempt_at = NULL")


def parked(pg: AppDb, user: int) -> tuple[Any, Any] | None:
    row = pg.state(user)
    return None if row is None or row.parked_at is None else (row.parked_by, row.parked_reason)


def test_a_user_failing_permanently_is_parked_after_quarantine_after_failures_in_a_row(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    backend.script(2, GONE)
    email_sync.configure(pg, backend, sync={"quarantine_after": 3})

    runs_after_each_backoff(pg, email_sync, 2)
    assert parked(pg, 2) is None
    runs_after_each_backoff(pg, email_sync, 2)

    by, reason = parked(pg, 2) or (None, None)
    assert by == "quarantine" and "422" in reason and "mailbox deleted" in reason
    assert len(backend.sync_calls(2)) == 3, "the fourth run did not call it"


def test_one_alert_names_every_user_a_run_quarantined(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(3)
    backend.script(1, GONE)
    backend.script(3, Behaviour(status=410, body=b'{"error": "account closed"}'))
    with Backend(sync_path="/hooks/email-sync") as hook:
        email_sync.configure(
            pg, backend, sync={"quarantine_after": 1}, alert={"webhook_url": hook.base_url + "/hooks/email-sync"}
        )
        result = email_sync("run")
        alerts = hook.sync_calls()

    assert result.code == EXIT_OK
    assert len(alerts) == 1
    alert = alerts[0].json
    assert alert["event"] == "users_quarantined" and alert["run_id"] == pg.runs()[0].id
    assert sorted(user["user_id"] for user in alert["users"]) == [1, 3]
    assert result.event("users_quarantined")["count"] == 2


def test_the_quarantine_alert_never_carries_the_token_a_backend_echoed(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(1)
    backend.script(1, Behaviour(status=422, echo="raw"))
    token = tmp_path / "token"
    token.write_text("the-backend-token-value")
    token.chmod(0o600)
    with Backend(sync_path="/hooks/email-sync") as hook:
        email_sync.configure(
            pg,
            backend,
            backend={"token_file": str(token)},
            sync={"quarantine_after": 1},
            alert={"webhook_url": hook.base_url + "/hooks/email-sync"},
        )
        assert email_sync("run").code == EXIT_OK
        [alert] = hook.sync_calls()

    [user] = alert.json["users"]
    assert "422" in user["reason"] and "***" in user["reason"]
    assert "the-backend-token-value" not in alert.body.decode()


def test_transient_failures_keep_their_backoff_and_are_never_quarantined(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.script(1, DOWN)
    email_sync.configure(pg, backend, sync={"quarantine_after": 2})

    runs_after_each_backoff(pg, email_sync, 3)

    assert parked(pg, 1) is None
    assert pg.state(1).failures == 3


def test_a_transient_failure_starts_the_count_of_permanent_ones_again(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.script(1, GONE, DOWN, DOWN, DOWN, GONE)  # the 503 is tried three times (backend.retries = 2)
    email_sync.configure(pg, backend, sync={"quarantine_after": 2})

    runs_after_each_backoff(pg, email_sync, 3)  # 422, 503, 422
    assert parked(pg, 1) is None
    runs_after_each_backoff(pg, email_sync, 1)  # 422 again: two in a row

    assert parked(pg, 1) is not None


def test_quarantine_statuses_say_which_answers_count(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(2)
    backend.script(1, GONE)
    backend.script(2, Behaviour(status=410))
    email_sync.configure(pg, backend, sync={"quarantine_after": 1, "quarantine_statuses": [410]})

    runs_after_each_backoff(pg, email_sync, 2)

    assert parked(pg, 1) is None
    assert parked(pg, 2) is not None


def test_quarantine_after_0_never_parks_anyone(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    backend.script(1, GONE)
    email_sync.configure(pg, backend, sync={"quarantine_after": 0})

    runs_after_each_backoff(pg, email_sync, 3)

    assert parked(pg, 1) is None and len(backend.sync_calls(1)) == 3


def test_users_parked_lists_the_quarantined_and_reset_returns_them(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.script(1, GONE, Behaviour(status=200))
    email_sync.configure(pg, backend, sync={"quarantine_after": 1})
    email_sync("run")

    [line] = email_sync("users", "--parked").stdout.splitlines()
    assert line.startswith("1 ") and "by quarantine" in line and "mailbox deleted" in line

    assert email_sync("reset", "1").code == EXIT_OK
    assert parked(pg, 1) is None and pg.state(1).failures == 0
    email_sync("run")
    assert pg.synced_ids() == {1}


def test_reset_all_failing_leaves_an_operators_park_alone(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(2)
    backend.set_default(GONE)
    email_sync.configure(pg, backend, sync={"quarantine_after": 1})
    email_sync("run")  # both quarantined
    email_sync("park", "2", "--reason", "mailbox being migrated")

    assert email_sync("reset", "--all-failing").code == EXIT_OK

    assert parked(pg, 1) is None
    by, reason = parked(pg, 2) or (None, None)
    assert "@" in by and reason == "mailbox being migrated"
    assert pg.state(2).failures == 0, "its backoff is cleared all the same"


def test_an_alert_that_cannot_be_sent_is_logged_and_the_run_still_succeeds(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.script(1, GONE)
    email_sync.configure(pg, backend, sync={"quarantine_after": 1}, alert={"webhook_url": "http://127.0.0.1:9/hook"})

    result = email_sync("run")

    assert result.code == EXIT_OK
    assert "alert webhook unreachable" in result.event("alert_failed")["error"]
    assert parked(pg, 1) is not None


def test_the_metrics_count_parked_users_apart_from_those_in_backoff(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    pg.add_users(3)
    backend.script(1, GONE)
    backend.script(2, DOWN)
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, sync={"quarantine_after": 1}, metrics={"textfile": str(textfile)})

    email_sync("run")

    samples = {s.name: s.value for f in text_string_to_metric_families(textfile.read_text()) for s in f.samples}
    assert (samples["email_sync_users_parked"], samples["email_sync_users_in_backoff"]) == (1, 1)
