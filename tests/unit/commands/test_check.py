"""`email-sync check` compares the longest silence with the unit's WatchdogSec even where systemd cannot tell (no
running systemd): it reads the installed unit file and its drop-ins as systemd would. A file that is not TOML still
gets the other checks, and under database.migrate = auto a schema behind passes, as the next run migrates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from emailsync.commands import check
from emailsync.errors import EXIT_NO, EXIT_OK
from emailsync.store import schema
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync

SHIPPED = Path(__file__).resolve().parents[3] / "systemd" / "email-sync.service"


def test_the_shipped_unit_file_gives_its_watchdog(tmp_path: Path) -> None:
    vendor = tmp_path / "usr"
    vendor.mkdir()
    (vendor / "email-sync.service").write_text(SHIPPED.read_text())
    assert check._file_watchdog((tmp_path / "etc", vendor)) == 150.0


def test_a_drop_in_overrides_the_unit_file_and_the_last_drop_in_wins(tmp_path: Path) -> None:
    admin, vendor = tmp_path / "etc", tmp_path / "usr"
    (admin / "email-sync.service.d").mkdir(parents=True)
    (vendor / "email-sync.service.d").mkdir(parents=True)
    (vendor / "email-sync.service").write_text("[Service]\nWatchdogSec=150s\n")
    (vendor / "email-sync.service.d" / "10-vendor.conf").write_text("[Service]\nWatchdogSec=2min\n")
    assert check._file_watchdog((admin, vendor)) == 120.0
    (admin / "email-sync.service.d" / "20-site.conf").write_text("[Service]\nWatchdogSec=1min 30s\n")
    assert check._file_watchdog((admin, vendor)) == 90.0
    (admin / "email-sync.service.d" / "30-off.conf").write_text("[Service]\nWatchdogSec=0\n")
    assert check._file_watchdog((admin, vendor)) is None


def test_no_unit_file_means_not_checked(tmp_path: Path) -> None:
    assert check._file_watchdog((tmp_path,)) is None


def test_check_of_a_file_that_is_not_toml_still_checks_the_interpreter_and_dependencies(
    email_sync: EmailSync,
) -> None:
    email_sync.config_path.write_text("[backend\n")

    result = email_sync("check")

    assert result.code == EXIT_NO
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"✘ config: {email_sync.config_path}: invalid TOML")
    assert lines[1].startswith("✔ interpreter") and lines[2].startswith("✔ dependencies")
    assert "- database: not checked: fix the config file first" in lines


@pytest.mark.parametrize("version", [None, schema.SCHEMA_VERSION - 1], ids=["never-migrated", "one-step-behind"])
def test_check_under_auto_migration_passes_a_schema_behind_as_the_next_run_migrates_it(
    version: int | None, app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.drop_our_tables()
    if version is not None:
        schema.migrate(app_db.engine, target=version)
    email_sync.configure(app_db, backend)  # database.migrate = "auto", the default

    result = email_sync("check")

    assert result.code == EXIT_OK, result.stdout
    [line] = [line for line in result.stdout.splitlines() if line.startswith("✔ database")]
    found = "no email-sync tables yet" if version is None else f"schema v{version}"
    assert f"{found}: the next `email-sync run` migrates it to v{schema.SCHEMA_VERSION} itself" in line
    assert email_sync("run").code == EXIT_OK  # as check said
    assert app_db.scalar("SELECT max(version) FROM email_sync_schema") == schema.SCHEMA_VERSION
