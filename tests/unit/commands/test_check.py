"""`email-sync check` compares the longest silence with the unit's WatchdogSec even where systemd cannot tell (no
running systemd): it reads the installed unit file and its drop-ins as systemd would."""

from __future__ import annotations

from pathlib import Path

from emailsync.commands import check

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
