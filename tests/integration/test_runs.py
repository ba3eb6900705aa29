"""Whole runs as processes: signals, crashes, two runs at once, a dropped connection, batch writes, volume."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text

from emailsync.config.settings import DatabaseConfig
from emailsync.store import db, schema
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync, _fresh_app_db
from tests.integration.conftest import ON_BOTH_DATABASES
from tests.postgres import Cluster


@ON_BOTH_DATABASES
def test_sigterm_records_calls_in_flight_and_releases_the_rest(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(20)
    backend.set_default(Behaviour(delay=1.0))
    email_sync.configure(app_db, backend, backend={"concurrency": 4}, sync={"shutdown_grace": "10s"})
    process = email_sync.popen("run")
    assert backend.wait_for_sync_calls(4, timeout=30)

    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)

    assert process.returncode == 0, stdout
    called = {call.user_id for call in backend.sync_calls()}
    assert app_db.synced_ids() == called  # every call that started was recorded
    assert len(called) < 20
    assert app_db.leased() == []
    assert app_db.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures > 0") == 0
    [run] = app_db.runs()
    assert (run.outcome, run.synced, run.synced + run.skipped) == ("interrupted", len(called), run.synced + run.skipped)
    assert '"event":"cycle_finished"' in stdout


def test_answers_that_come_while_stopping_are_written_as_they_come_not_after_the_grace(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    """systemd kills a run still stopping after its TimeoutStopSec: the answers of the grace must not wait for its
    end to be written."""
    pg.add_users(2)
    first, second = threading.Event(), threading.Event()
    backend.script(1, Behaviour(hold=first))
    backend.script(2, Behaviour(hold=second))
    email_sync.configure(
        pg,
        backend,
        backend={"concurrency": 2, "read_timeout": "10min", "call_timeout": "10min", "retries": 0},
        sync={"shutdown_grace": "10min", "lease": "1h"},
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        process = email_sync.popen("run", env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert backend.wait_for_sync_calls(2, timeout=30)
        process.send_signal(signal.SIGTERM)
        while b"STOPPING=1" not in notify.recv(4096):
            pass

        first.set()

        assert _eventually(lambda: pg.synced_ids() == {1}), "written while the other call is still in flight"
        second.set()
        stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, stdout
    assert pg.synced_ids() == {1, 2}


def test_after_a_crash_the_leases_expire_and_the_next_run_syncs_everyone(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(12)
    backend.set_default(Behaviour(delay=1.0))
    email_sync.configure(pg, backend, backend={"concurrency": 3})
    process = email_sync.popen("run")
    assert backend.wait_for_sync_calls(3, timeout=30)
    process.kill()
    process.wait(timeout=10)
    stranded = set(pg.leased())
    assert stranded and pg.synced_ids() == set()

    backend.set_default(Behaviour())
    assert email_sync("run").code == 0
    assert {str(i) for i in range(1, 13)} - {str(i) for i in pg.synced_ids()} == stranded  # live leases respected

    pg.execute("UPDATE email_sync_user_state SET lease_until = now() - interval '1 second'")  # time passes
    assert email_sync("run").code == 0
    assert pg.synced_ids() == set(range(1, 13))
    assert pg.leased() == []


def test_a_run_killed_while_calls_are_answered_forgets_only_unwritten_results_and_resends_their_keys(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """kill -9 (the OOM killer, the watchdog, a power cut) while answers arrive: the users whose results were written
    are done; those whose answers it forgot, and those whose calls it never heard back from, are synced again once
    their leases run out, each with the Idempotency-Key of its first call, so a backend that honours it syncs once."""
    pg.add_users(12)
    answer = threading.Event()
    for number in range(1, 5):
        backend.on_call(number, Behaviour())  # answered, and their results written
    for number in range(5, 9):
        backend.on_call(number, Behaviour(hold=answer))  # answered while the run cannot write
    backend.set_default(Behaviour(hang=True))  # in flight when the run dies
    patient = {"concurrency": 4, "read_timeout": "10min", "call_timeout": "10min", "retries": 0}  # nobody times out
    email_sync.configure(pg, backend, backend=patient, sync={"lease": "1h"})
    process = email_sync.popen("run")
    try:
        assert _eventually(lambda: len(pg.synced_ids()) == 4), "the first four results are written"
        with pg.engine.connect() as blocker:
            blocker.execute(text("LOCK TABLE users IN SHARE MODE"))  # claims go on, last_sync cannot be written
            answer.set()
            assert backend.wait_for_answers(8, timeout=30)
            assert _eventually(lambda: _waiting_on_a_lock(pg)), "the run holds answered results it cannot write"
            process.kill()
            process.wait(timeout=30)
            blocker.rollback()
    finally:
        process.kill()
        process.communicate(timeout=30)
    first = backend.sync_calls()
    written = pg.synced_ids()
    forgotten = {call.user_id for call in first if call.status == 200} - written
    assert len(written) == 4 and len(forgotten) == 4

    pg.execute("UPDATE email_sync_user_state SET lease_until = now() - interval '1 second'")  # the leases run out
    backend.set_default(Behaviour())
    assert email_sync("run").code == 0

    again = backend.sync_calls()[len(first) :]
    assert sorted(call.user_id for call in again) == sorted(set(range(1, 13)) - written)  # each once, none written
    first_key = {call.user_id: call.header("Idempotency-Key") for call in reversed(first)}
    resent = [call for call in again if call.user_id in first_key]
    assert {call.user_id for call in resent} >= forgotten
    assert [call.header("Idempotency-Key") for call in resent] == [first_key[call.user_id] for call in resent]
    assert len({call.header("Idempotency-Key") for call in again}) == len(again)
    assert pg.synced_ids() == set(range(1, 13)) and pg.leased() == []


def _eventually(condition: Callable[[], bool], within: float = 30.0) -> bool:
    """Whether ``condition`` comes true within ``within`` seconds (a guard against a hang, not a measurement)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _waiting_on_a_lock(app: AppDb) -> bool:
    return bool(
        app.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'email-sync' "
            "AND datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


def test_two_runs_at_once_sync_every_user_exactly_once(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(400)
    backend.set_default(Behaviour(delay=0.01))
    email_sync.configure(pg, backend, backend={"concurrency": 8}, sync={"batch_size": 20})

    processes = [email_sync.popen("run", env={"EMAIL_SYNC_SYNC_HOST_ID": f"host-{n}"}) for n in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    calls = Counter(call.user_id for call in backend.sync_calls())
    assert set(calls) == set(range(1, 401)) and set(calls.values()) == {1}
    assert pg.synced_ids() == set(range(1, 401))
    runs = pg.runs()
    assert sum(run.synced for run in runs) == 400
    assert {run.host for run in runs} == {"host-0", "host-1"}


def test_a_dropped_database_connection_mid_cycle_is_recovered(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(24)
    backend.set_default(Behaviour(delay=0.3))
    email_sync.configure(pg, backend, backend={"concurrency": 4}, sync={"batch_size": 4})
    process = email_sync.popen("run")
    assert backend.wait_for_sync_calls(6, timeout=30)

    killed = pg.scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'email-sync' AND datname = current_database()"
    )
    stdout, _ = process.communicate(timeout=60)

    assert killed >= 1
    assert process.returncode == 0, stdout
    assert pg.synced_ids() == set(range(1, 25))
    assert pg.leased() == []


def test_results_are_written_in_batches_not_a_commit_per_user(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(200)
    email_sync.configure(pg, backend, backend={"concurrency": 8}, sync={"batch_size": 50})
    commits = []

    def count(connection: object) -> None:
        commits.append(connection)

    event.listen(Engine, "commit", count)
    try:
        assert email_sync("run").code == 0
    finally:
        event.remove(Engine, "commit", count)

    assert pg.synced_ids() == set(range(1, 201))
    assert len(commits) < 200 / 4


def test_a_thousand_due_users_are_each_synced_once_and_a_second_run_finds_none(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1000)
    email_sync.configure(pg, backend, backend={"concurrency": 16})

    first = email_sync("run")
    second = email_sync("run")

    assert (first.code, second.code) == (0, 0)
    calls = Counter(call.user_id for call in backend.sync_calls())
    assert len(calls) == 1000 and set(calls.values()) == {1}
    assert pg.synced_ids() == set(range(1, 1001))
    assert first.event("cycle_finished")["synced"] == 1000
    assert second.event("cycle_finished")["due"] == 0
    assert [run.synced for run in pg.runs()] == [1000, 0]


@pytest.fixture
def restartable() -> Iterator[tuple[Cluster, AppDb]]:
    """The app's database on a cluster of this test's own, so restarting it disconnects no other test or suite."""
    with Cluster() as cluster:
        cluster_db = _fresh_app_db(db.driver_url(cluster.url()), "postgresql")
        yield cluster, cluster_db
        cluster_db.engine.dispose()


def test_postgresql_restarted_mid_cycle_loses_nothing(
    restartable: tuple[Cluster, AppDb], backend: Backend, email_sync: EmailSync
) -> None:
    cluster, pg = restartable
    pg.add_users(40)
    backend.set_default(Behaviour(delay=0.1))
    email_sync.configure(pg, backend, backend={"concurrency": 4}, sync={"batch_size": 8})
    process = email_sync.popen("run")
    assert backend.wait_for_sync_calls(8, timeout=30)

    cluster.restart()
    stdout, _ = process.communicate(timeout=120)

    assert process.returncode in (0, 75), stdout
    pg.engine.dispose()  # the test's own pooled connections died with the server
    answered = {call.user_id for call in backend.sync_calls()}
    assert pg.synced_ids() <= answered
    pg.execute("UPDATE email_sync_user_state SET lease_until = now() - interval '1 second'")  # leases expire
    assert email_sync("run").code == 0
    assert pg.synced_ids() == set(range(1, 41))


MIGRATE_LOCK = "hashtext('email-sync migrate')"  # the advisory lock key of emailsync.store.schema.migrate


def wait_until_waiting_for_migrate(pg: AppDb, processes: list[subprocess.Popen[str]]) -> None:
    waiting = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    hung = time.monotonic() + 60  # only a guard against a hang: the runs wait within a second or two
    while pg.scalar(waiting) < len(processes):
        assert all(process.poll() is None for process in processes), "a run did not wait for migrate's lock"
        assert time.monotonic() < hung, "the runs never all waited for migrate's lock"
        time.sleep(0.05)


def test_two_runs_meeting_a_schema_step_at_once_one_migrates_the_other_waits_and_both_sync(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """The test holds migrate's lock until both runs wait for it: then one applies the step, the other finds it
    applied, and both go on to share the due users."""
    engine = db.connect(DatabaseConfig(url=pg.url, connect_timeout=5, statement_timeout=30))
    pg.drop_our_tables()
    schema.migrate(engine, target=schema.SCHEMA_VERSION - 1)
    engine.dispose()
    pg.add_users(200)
    backend.set_default(Behaviour(delay=0.01))
    email_sync.configure(pg, backend, backend={"concurrency": 8}, sync={"batch_size": 20})

    with pg.engine.connect() as holder:
        holder.execute(text(f"SELECT pg_advisory_lock({MIGRATE_LOCK})"))
        processes = [email_sync.popen("run", env={"EMAIL_SYNC_SYNC_HOST_ID": f"host-{n}"}) for n in range(2)]
        wait_until_waiting_for_migrate(pg, processes)
        assert pg.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == schema.SCHEMA_VERSION - 1
        holder.execute(text(f"SELECT pg_advisory_unlock({MIGRATE_LOCK})"))
        holder.commit()
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sum('"event":"schema_migrated"' in output for output in outputs) == 1
    versions = [row[0] for row in pg.rows(f"SELECT version FROM {db.VERSION_TABLE} ORDER BY version")]
    assert versions == [step.version for step in schema.STEPS]  # each step once
    calls = Counter(call.user_id for call in backend.sync_calls())
    assert set(calls) == set(range(1, 201)) and set(calls.values()) == {1}
    assert {run.host for run in pg.runs()} == {"host-0", "host-1"}


def test_a_run_that_waited_for_migrate_while_a_newer_release_migrated_past_it_stands_aside(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    engine = db.connect(DatabaseConfig(url=pg.url, connect_timeout=5, statement_timeout=30))
    pg.drop_our_tables()
    schema.migrate(engine, target=schema.SCHEMA_VERSION - 1)
    engine.dispose()
    pg.add_users(3)
    email_sync.configure(pg, backend)
    newer = schema.SCHEMA_VERSION + 1

    with pg.engine.connect() as holder:  # the newer release's migrate, holding the lock while this run waits for it
        holder.execute(text(f"SELECT pg_advisory_lock({MIGRATE_LOCK})"))
        process = email_sync.popen("run")
        wait_until_waiting_for_migrate(pg, [process])
        for statement in schema.STEPS[-1].statements(db.Dialect("postgresql")):
            holder.execute(text(statement))
        for version in (schema.SCHEMA_VERSION, newer):
            holder.execute(text(f"INSERT INTO {db.VERSION_TABLE} (version, applied_at) VALUES ({version}, now())"))
        holder.commit()
        holder.execute(text(f"SELECT pg_advisory_unlock({MIGRATE_LOCK})"))
        holder.commit()
    stdout, _ = process.communicate(timeout=120)

    assert process.returncode == 0, stdout
    assert '"event":"awaiting_upgrade"' in stdout and '"event":"schema_migrated"' not in stdout
    assert backend.sync_calls() == []
    [run] = pg.runs()
    assert run.outcome == "stood_aside"
