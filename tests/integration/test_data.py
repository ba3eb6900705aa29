"""Odd data and a moving world: id types, Unicode emails (tests/unit's test, run again here on PostgreSQL), users
changing mid-cycle, TLS, a locked table."""

from __future__ import annotations

import threading

import pytest

from emailsync.errors import EXIT_TEMPFAIL
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.unit.sync.test_cycle import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    test_unicode_and_odd_emails_reach_the_backend_intact,
)


@pytest.mark.parametrize(
    ("ddl", "ids"),
    [
        ("id uuid PRIMARY KEY", ["7d444840-9dc0-11d1-b245-5ffdce74fad2", "0b7e4b1c-1f49-4c1e-8e47-4f2a7c2b7c11"]),
        ("id bigint PRIMARY KEY", [9_007_199_254_740_993, 1]),
        ("id text PRIMARY KEY", ["alice", "bob o'brien; --"]),
    ],
)
def test_user_ids_of_any_type_are_sent_and_recorded(
    ddl: str, ids: list[object], pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.execute("DROP TABLE users")
    pg.execute(f"CREATE TABLE users ({ddl}, email text NOT NULL, last_sync timestamptz)")
    for number, user_id in enumerate(ids):
        pg.execute("INSERT INTO users (id, email) VALUES (:id, :email)", id=user_id, email=f"u{number}@example.com")
    email_sync.configure(pg, backend)

    assert email_sync("run").code == 0

    assert sorted(str(call.user_id) for call in backend.sync_calls()) == sorted(str(i) for i in ids)
    assert pg.scalar("SELECT count(*) FROM users WHERE last_sync IS NOT NULL") == len(ids)


def test_a_user_deleted_mid_call_is_simply_gone(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(3)
    backend.script(2, Behaviour(delay=1.0))
    email_sync.configure(pg, backend)
    deleter = threading.Thread(
        target=lambda: backend.wait_for_sync_calls(3) and pg.execute("DELETE FROM users WHERE id = 2")
    )
    deleter.start()

    result = email_sync("run")
    deleter.join()

    assert result.code == 0
    assert pg.synced_ids() == {1, 3}
    assert pg.scalar("SELECT count(*) FROM users") == 2
    assert pg.leased() == []


def test_an_email_changed_mid_call_keeps_the_user_synced_once(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    backend.script(1, Behaviour(delay=1.0))
    email_sync.configure(pg, backend)
    changer = threading.Thread(
        target=lambda: (
            backend.wait_for_sync_calls(2) and pg.execute("UPDATE users SET email = 'new@example.com' WHERE id = 1")
        )
    )
    changer.start()

    assert email_sync("run").code == 0
    changer.join()
    assert email_sync("run").code == 0

    assert len(backend.sync_calls(1)) == 1
    assert pg.synced_ids() == {1, 2}
    assert pg.scalar("SELECT email FROM users WHERE id = 1") == "new@example.com"


def test_self_signed_backend_is_rejected_by_default(
    pg: AppDb, email_sync: EmailSync, self_signed_cert: tuple[str, str]
) -> None:
    pg.add_users(1)
    with Backend(tls=self_signed_cert) as backend:
        email_sync.configure(pg, backend)
        result = email_sync("run")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "certificate verify failed", backend.base_url)
    assert pg.synced_ids() == set()


def test_self_signed_backend_is_trusted_with_its_ca_file(
    pg: AppDb, email_sync: EmailSync, self_signed_cert: tuple[str, str]
) -> None:
    pg.add_users(1)
    with Backend(tls=self_signed_cert) as backend:
        email_sync.configure(pg, backend, backend={"ca_file": self_signed_cert[0]})
        result = email_sync("run")

    assert result.code == 0, result.stdout
    assert pg.synced_ids() == {1}


def test_a_locked_users_table_ends_in_a_statement_timeout_and_75(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    email_sync.configure(pg, backend, database={"statement_timeout": "500ms"})
    with pg.engine.connect() as blocker:
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        result = email_sync("run")
        blocker.rollback()

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database")
    assert pg.synced_ids() == set() and pg.leased() == []
    assert email_sync("run").code == 0
    assert pg.synced_ids() == {1, 2}
