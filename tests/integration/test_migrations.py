"""email-sync's schema as ordered steps: a database upgraded from any earlier version ends exactly where a fresh
install starts (tables, columns, indexes, constraints), on PostgreSQL and on SQLite; a run applies the steps the
database lacks by itself (or refuses, when told to or when its role may not), and a release older than the database's
schema stands aside."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, make_url

from emailsync import __version__
from emailsync.config.settings import DatabaseConfig
from emailsync.errors import EXIT_CONFIG, EXIT_OK
from emailsync.store import db, schema
from harness.backend import Backend
from tests.conftest import OUR_TABLES, AppDb, EmailSync, a_newer_release_migrated


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


@pytest.fixture
def dml_role(pg: AppDb) -> Iterator[str]:
    """A login role that may neither create a table in the schema nor alter ours (it owns none): the run role of a
    DBA who keeps the DDL to himself. The test grants it what a run reads and writes."""
    name = f"email_sync_dml_{uuid.uuid4().hex[:8]}"  # roles are the whole server's: one of this test's own
    pg.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    pg.execute(f"CREATE ROLE {name} LOGIN")
    pg.execute(f"GRANT SELECT, UPDATE ON users TO {name}")
    yield name
    pg.execute(f"DROP OWNED BY {name}")
    pg.execute(f"DROP ROLE {name}")


def as_role(app: AppDb, role: str) -> AppDb:
    return AppDb(make_url(app.url).set(username=role).render_as_string(hide_password=False), app.engine)


def test_a_run_whose_role_may_not_change_the_schema_exits_78_saying_how_to_migrate(
    pg: AppDb, dml_role: str, backend: Backend, email_sync: EmailSync
) -> None:
    behind(pg, schema.SCHEMA_VERSION - 1)
    pg.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(OUR_TABLES)} TO {dml_role}")
    pg.add_users(2)
    email_sync.configure(as_role(pg, dml_role), backend)

    result = email_sync("run")

    message = result.assert_one_clear_error(EXIT_CONFIG, "database.url", "may not change", "email-sync migrate")
    assert "permission denied" in message or "must be owner" in message
    assert len(message.splitlines()) == 1
    assert pg.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == schema.SCHEMA_VERSION - 1
    assert backend.sync_calls() == []


def test_migrate_as_the_owner_as_the_refusal_says_lets_the_runs_of_a_role_that_may_not_sync(
    pg: AppDb, dml_role: str, backend: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    behind(pg, schema.SCHEMA_VERSION - 1)
    pg.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(OUR_TABLES)} TO {dml_role}")
    pg.add_users(2)
    email_sync.configure(as_role(pg, dml_role), backend)
    assert email_sync("run").code == EXIT_CONFIG
    with monkeypatch.context() as owner:
        owner.setenv("EMAIL_SYNC_DATABASE_URL", pg.url)
        assert email_sync("migrate").code == EXIT_OK

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert pg.synced_ids() == {1, 2}


def test_a_run_whose_role_may_not_create_our_tables_exits_78_saying_how_to_migrate(
    pg: AppDb, dml_role: str, backend: Backend, email_sync: EmailSync
) -> None:
    pg.drop_our_tables()
    email_sync.configure(as_role(pg, dml_role), backend)

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "may not change", "permission denied for schema public", "migrate")
    assert not inspect(pg.engine).has_table(db.VERSION_TABLE)


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


OLDER_RELEASE = "22aa74a"  # the last commit of release 0.1.0 (schema v3) in this tree's history
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def older_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """email-sync 0.1.0, from this tree's git history, installed into a virtualenv of its own: that venv's python.
    Offline: its dependencies are the test venv's, on its path through a .pth file (not the test venv's own .pth
    files, so this tree's editable email-sync stays out of it)."""
    root = tmp_path_factory.mktemp("older-release")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLDER_RELEASE], capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"git archive {OLDER_RELEASE} failed (the tests need the repository's history): {archive.stderr!r}")
    (root / "src").mkdir()
    subprocess.run(["tar", "-x", "-C", str(root / "src")], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "email-sync-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    offline = ("--quiet", "--no-deps", "--no-index", "--no-build-isolation")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", *offline, str(root / "src")]
    subprocess.run(pip, check=True, capture_output=True)
    return python


def test_after_an_older_release_ran_the_first_run_of_this_one_migrates_and_syncs_with_nobody_typing_migrate(
    app_db: AppDb, backend: Backend, email_sync: EmailSync, older_release: Path
) -> None:
    behind(app_db, 0)  # the older release makes its own schema
    app_db.add_users(4)
    email_sync.configure(app_db, backend, backend={"sync_path": backend.sync_path})  # 0.1.0 had another default

    def older(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(older_release), "-m", "emailsync", "--config", str(email_sync.config_path), *args]
        # Not from this tree's directory, whose emailsync `python -m` would find first.
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=older_release.parent)

    assert older("--version").stdout.strip() == "email-sync 0.1.0"
    assert older("migrate").returncode == 0
    assert older("run").returncode == 0
    assert app_db.synced_ids() == {1, 2, 3, 4}
    assert app_db.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == 3
    app_db.add_users(2, start=5)
    app_db.execute(f"UPDATE users SET last_sync = {app_db.at(-7200)} WHERE id <= 2")  # due again
    called_before = len(backend.sync_calls())

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    migrated = result.event("schema_migrated")
    assert (migrated["from_version"], migrated["to_version"]) == (3, schema.SCHEMA_VERSION)
    assert sorted(call.user_id for call in backend.sync_calls()[called_before:]) == [1, 2, 5, 6]
    assert app_db.synced_ids() == {1, 2, 3, 4, 5, 6}
    assert [(run.release, run.outcome) for run in app_db.runs()] == [(None, "ok"), (__version__, "ok")]
