"""email-sync's schema as ordered steps: a database upgraded from any earlier version ends exactly where a fresh
install starts (tables, columns, indexes, constraints), on PostgreSQL as tests/unit/store/test_schema.py proves it on
SQLite (its tests run here again); a run refuses when its role may not change the schema; and the first run after an
older release migrates by itself, on both databases."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, make_url

from emailsync import __version__
from emailsync.errors import EXIT_CONFIG, EXIT_OK
from emailsync.store import db, schema
from harness.backend import Backend
from tests.conftest import OUR_TABLES, AppDb, EmailSync
from tests.integration.conftest import ON_BOTH_DATABASES
from tests.unit.store.test_schema import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    behind,
    test_a_host_is_no_longer_awaiting_an_upgrade_once_a_run_of_it_syncs,
    test_a_release_older_than_the_schema_stands_aside_claims_nobody_and_exits_0,
    test_a_run_applies_the_steps_the_database_lacks_then_syncs,
    test_a_run_on_a_current_schema_migrates_nothing,
    test_a_run_on_a_database_never_migrated_creates_the_schema,
    test_an_upgrade_from_each_version_ends_with_the_schema_of_a_fresh_install,
    test_each_step_is_recorded_once_in_order,
    test_status_names_the_hosts_awaiting_an_upgrade_and_stays_healthy,
    test_with_migrate_manual_a_run_behind_the_release_exits_78_naming_migrate_and_changes_nothing,
)


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


@ON_BOTH_DATABASES
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
