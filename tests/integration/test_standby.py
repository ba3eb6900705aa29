"""email-sync in front of a real primary and its streaming hot standby (tests/standby.py): every URL form libpq
documents finds the primary whichever host is listed first, a URL that reaches only the standby is one clear
temporary failure, and a failover in the middle of a run loses nothing the survivor recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from psycopg2.extensions import libpq_version
from sqlalchemy import create_engine

from emailsync.errors import EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync, _fresh_app_db
from tests.standby import Replicated, Server

# Each takes (first, second) servers and lists both, the first one first.
URL_FORMS: dict[str, Callable[[Server, Server], str]] = {
    "host list in the URI": lambda a, b: (
        f"postgresql://postgres@127.0.0.1:{a.port},127.0.0.1:{b.port}/app?target_session_attrs=read-write"
    ),
    "?host= and ?port= lists": lambda a, b: (
        f"postgresql://postgres@/app?host=127.0.0.1,127.0.0.1&port={a.port},{b.port}&target_session_attrs=primary"
    ),
    "repeated ?host=": lambda a, b: (
        f"postgresql://postgres@/app?host=127.0.0.1:{a.port}&host=127.0.0.1:{b.port}&target_session_attrs=read-write"
    ),
    "key=value": lambda a, b: (
        f"host=127.0.0.1,127.0.0.1 port={a.port},{b.port} user=postgres dbname=app target_session_attrs=read-write"
    ),
}


@pytest.mark.parametrize("form", URL_FORMS)
def test_every_url_form_with_the_standby_listed_first_syncs_on_the_primary(
    form: str, replicated: Replicated, replicated_app: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    ids = replicated_app.add_users(3, age=7200)
    url = URL_FORMS[form](replicated.standby, replicated.primary)
    email_sync.configure(AppDb(url, replicated_app.engine), backend)

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert replicated_app.synced_ids() == set(ids)


def test_load_balance_hosts_finds_the_primary_where_libpq_has_it_and_is_named_where_it_does_not(
    replicated: Replicated, replicated_app: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """libpq 16 and later (the test venv's, Debian 13's) has load_balance_hosts; Debian 12's libpq5 (15) has not."""
    ids = replicated_app.add_users(3, age=7200)
    url = URL_FORMS["host list in the URI"](replicated.standby, replicated.primary) + "&load_balance_hosts=random"
    email_sync.configure(AppDb(url, replicated_app.engine), backend)

    result = email_sync("run")

    if libpq_version() >= 160000:
        assert result.code == EXIT_OK, result.stdout
        assert replicated_app.synced_ids() == set(ids)
    else:
        result.assert_one_clear_error(EXIT_CONFIG, "database.url", "load_balance_hosts needs libpq 16 or later")


@pytest.mark.parametrize("attrs", ["", "?target_session_attrs=read-write", "?target_session_attrs=primary"])
def test_a_url_reaching_only_the_standby_is_one_temporary_line_saying_so(
    attrs: str, replicated: Replicated, replicated_app: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    replicated_app.add_users(2)
    url = f"postgresql://postgres@127.0.0.1:{replicated.standby.port}/app{attrs}"
    email_sync.configure(AppDb(url, replicated_app.engine), backend)

    result = email_sync("run")

    message = result.assert_one_clear_error(EXIT_TEMPFAIL, "database.url", "read-only hot standby", "failover")
    assert "target_session_attrs=read-write" in message
    assert backend.sync_calls() == []


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Guards against a hang only: the test's outcome never depends on how long this takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def synced(app: AppDb) -> dict[int, object]:
    """The users this test synced, and their last_sync."""
    done = app.synced_ids()
    return {user: last_sync for user, last_sync in app.last_syncs().items() if user in done}


def test_a_failover_during_a_run_loses_nothing_the_survivor_recorded_and_the_next_run_syncs_the_rest(
    backend: Backend, email_sync: EmailSync
) -> None:
    with Replicated() as pair:
        pair.primary.scalar("CREATE DATABASE app")
        app = _fresh_app_db(pair.primary.url("app"), "postgresql")
        ids = app.add_users(12, age=7200)
        url = URL_FORMS["host list in the URI"](pair.primary, pair.standby)
        email_sync.configure(AppDb(url, app.engine), backend)
        answers = threading.Event()
        backend.set_default(Behaviour(hold=answers))
        for first in range(1, 5):  # the first four calls are answered at once, the rest wait in flight
            backend.on_call(first, Behaviour())
        run = email_sync.popen("run")
        try:
            wait_until(lambda: len(app.synced_ids()) >= 4 and backend.in_flight > 0, "four recorded, calls in flight")
            pair.caught_up()
            recorded_before = synced(app)
            app.engine.dispose()
            pair.primary.stop("immediate")
            pair.standby.promote()
        finally:
            answers.set()
            stdout, stderr = run.communicate(timeout=120)

        assert run.returncode in (EXIT_OK, EXIT_TEMPFAIL), stdout + stderr
        assert "Traceback" not in stdout + stderr
        survivor = AppDb(pair.standby.url("app"), create_engine(pair.standby.url("app")))
        recorded = synced(survivor)
        assert recorded_before.items() <= recorded.items()

        second = email_sync.subprocess("run")

        assert second.code == EXIT_OK, second.stdout + second.stderr
        assert survivor.synced_ids() == set(ids)
        for user, last_sync in recorded.items():
            assert survivor.last_syncs()[user] == last_sync
            assert len(backend.sync_calls(user)) == 1
        survivor.engine.dispose()
