"""email-sync's schema as ordered steps: a database upgraded from any earlier version ends exactly where a fresh
install starts (tables, columns, indexes, constraints); a run applies the steps the database lacks by itself (or
refuses, when told to), and a release older than the database's schema stands aside. On SQLite here;
tests/integration/test_migrations.py runs them again on PostgreSQL, with the roles that may not migrate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, inspect

from emailsync import __version__
from emailsync.config.settings import DatabaseConfig
from emailsync.errors import EXIT_CONFIG, EXIT_OK
from emailsync.store import db, schema
from harness.backend import Backend
from tests.conftest import OUR_TABLES, AppDb, EmailSync, a_newer_release_migrated


def test_the_migration_steps_are_numbered_one_to_the_latest() -> None:
    assert [step.version for step in schema.STEPS] == list(range(1, schema.SCHEMA_VERSION + 1))


def test_the_schema_version_that_version_prints_is_the_last_steps() -> None:
    import emailsync

    assert schema.STEPS[-1].version == emailsync.SCHEMA_VERSION


def schema_of(engine: Engine) -> dict[str, Any]:
    """Everything the database says about our tables, in a form two databases can be compared by."""
    inspector = inspect(engine)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
                )
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            "checks": sorted(str(c["sqltext"]) for c in inspector.get_check_constraints(table)),
            "foreign keys": sorted(str(f) for f in inspector.get_foreign_keys(table)),
        }
        for table in OUR_TABLES
    }


def without_our_tables(app: AppDb) -> Engine:
    """An email-sync engine on the app's database, whose email-sync tables are gone: a new install."""
    app.drop_our_tables()
    return db.connect(DatabaseConfig(url=app.url, connect_timeout=5, statement_timeout=30))


@pytest.mark.parametrize("start", [step.version for step in schema.STEPS])
def test_an_upgrade_from_each_version_ends_with_the_schema_of_a_fresh_install(start: int, app_db: AppDb) -> None:
    fresh = schema_of(app_db.engine)
    engine = without_our_tables(app_db)

    assert schema.migrate(engine, target=start) == (None, start)
    assert schema.migrate(engine) == (start, schema.SCHEMA_VERSION)

    assert schema_of(app_db.engine) == fresh
    engine.dispose()


def test_each_step_is_recorded_once_in_order(app_db: AppDb) -> None:
    engine = without_our_tables(app_db)

    schema.migrate(engine)
    schema.migrate(engine)

    versions = [row[0] for row in app_db.rows(f"SELECT version FROM {db.VERSION_TABLE} ORDER BY applied_at, version")]
    assert versions == [step.version for step in schema.STEPS]
    engine.dispose()


def behind(app: AppDb, version: int) -> None:
    """The app's database as a host of the release whose schema was ``version`` left it (0: never migrated)."""
    engine = without_our_tables(app)
    if version:
        schema.migrate(engine, target=version)
    engine.dispose()


def test_a_run_applies_the_steps_the_database_lacks_then_syncs(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    behind(app_db, schema.SCHEMA_VERSION - 1)
    app_db.add_users(5)
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    migrated = result.event("schema_migrated")
    assert (migrated["from_version"], migrated["to_version"]) == (schema.SCHEMA_VERSION - 1, schema.SCHEMA_VERSION)
    assert app_db.synced_ids() == {1, 2, 3, 4, 5}
    assert app_db.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == schema.SCHEMA_VERSION


def test_a_run_on_a_database_never_migrated_creates_the_schema(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    behind(app_db, 0)
    app_db.add_users(2)
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert result.event("schema_migrated")["from_version"] is None
    assert app_db.synced_ids() == {1, 2}


def test_a_run_on_a_current_schema_migrates_nothing(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == EXIT_OK and "schema_migrated" not in result.stdout


def test_with_migrate_manual_a_run_behind_the_release_exits_78_naming_migrate_and_changes_nothing(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    behind(app_db, schema.SCHEMA_VERSION - 1)
    app_db.add_users(2)
    email_sync.configure(app_db, backend, database={"migrate": "manual"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, f"older than v{schema.SCHEMA_VERSION}", "run `email-sync migrate`")
    assert app_db.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == schema.SCHEMA_VERSION - 1
    assert backend.sync_calls() == []


def test_a_release_older_than_the_schema_stands_aside_claims_nobody_and_exits_0(
    app_db: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = a_newer_release_migrated(app_db, monkeypatch)
    app_db.add_users(3)
    email_sync.configure(app_db, backend, sync={"host_id": "old-host"})

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert result.errors == []
    [warning] = [e for e in result.events if e["level"] == "warning"]
    assert warning["event"] == "awaiting_upgrade"
    assert (warning["release"], warning["schema_known"], warning["schema_found"]) == (
        __version__,
        schema.SCHEMA_VERSION,
        newer,
    )
    assert backend.sync_calls() == [] and app_db.synced_ids() == set() and app_db.leased() == []
    [run] = app_db.runs()
    assert (run.host, run.release, run.outcome) == ("old-host", __version__, "stood_aside")
    assert app_db.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == newer  # nothing undone


def test_status_names_the_hosts_awaiting_an_upgrade_and_stays_healthy(
    app_db: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    email_sync.configure(app_db, backend, sync={"host_id": "new-host"})
    assert email_sync("run").code == EXIT_OK  # a host of this release, before the newer one migrated
    a_newer_release_migrated(app_db, monkeypatch)
    email_sync.configure(app_db, backend, sync={"host_id": "old-host"})
    assert email_sync("run").code == EXIT_OK

    report, shown = email_sync("status", "--json"), email_sync("status")

    assert (report.code, shown.code) == (EXIT_OK, EXIT_OK)
    awaiting = json.loads(report.stdout)["awaiting_upgrade"]
    assert [(host["host"], host["release"]) for host in awaiting] == [("old-host", __version__)]
    lines = shown.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("awaiting upgrade"))
    assert lines[heading + 1].split()[:2] == ["old-host", f"{__version__},"]
    assert all(len(line) <= 80 for line in lines)


def test_a_host_is_no_longer_awaiting_an_upgrade_once_a_run_of_it_syncs(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(app_db, backend, sync={"host_id": "old-host"})
    app_db.execute(
        f"INSERT INTO {db.RUNS} (id, host, pid, release, started_at, outcome) "
        f"VALUES ('earlier', 'old-host', 1, '0.1.9', {app_db.at(-60)}, 'stood_aside')"
    )
    assert [h["host"] for h in json.loads(email_sync("status", "--json").stdout)["awaiting_upgrade"]] == ["old-host"]

    assert email_sync("run").code == EXIT_OK  # upgraded: this release knows the schema

    assert json.loads(email_sync("status", "--json").stdout)["awaiting_upgrade"] == []
