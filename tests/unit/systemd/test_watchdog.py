"""The watchdog rule (emailsync.systemd.notify.WatchdogSettings): ping at least every half WatchdogSec. A run whose
calls may stay silent longer is refused before it starts, and `check` fails on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from emailsync.commands import check
from emailsync.config.settings import Config, load
from emailsync.errors import ConfigError
from emailsync.sync.cycle import check_watchdog_fits
from emailsync.systemd.notify import Notifier, WatchdogSettings

SHIPPED_SILENCE = 65.0  # backend.call_timeout + retry_backoff_max, by default
SHIPPED_WATCHDOG = 150.0  # systemd/email-sync.service's WatchdogSec


def config(tmp_path: Path, backend: str = "") -> Config:
    path = tmp_path / "email-sync.toml"
    path.write_text(
        f'[database]\nurl = "postgresql://app@127.0.0.1/app"\n[backend]\nbase_url = "http://127.0.0.1:9"\n{backend}'
    )
    return load(str(path), {})


def test_work_silent_for_less_than_half_the_interval_keeps_the_rule() -> None:
    assert WatchdogSettings(interval=150.0).allows(74.9)


@pytest.mark.parametrize("silence", [75.0, 150.0])
def test_work_silent_for_half_the_interval_or_longer_breaks_the_rule(silence: float) -> None:
    assert not WatchdogSettings(interval=150.0).allows(silence)


def test_a_run_with_the_shipped_timeouts_and_watchdog_starts(tmp_path: Path) -> None:
    assert config(tmp_path).backend.longest_silence == SHIPPED_SILENCE
    check_watchdog_fits(config(tmp_path), Notifier(False, WatchdogSettings(interval=SHIPPED_WATCHDOG)))


def test_a_run_whose_calls_may_be_silent_half_the_watchdog_is_refused_naming_the_keys(tmp_path: Path) -> None:
    notifier = Notifier(False, WatchdogSettings(interval=2 * SHIPPED_SILENCE))

    with pytest.raises(ConfigError, match=r"backend\.call_timeout \+ retry_backoff_max \(65s\).*WatchdogSec \(130s\)"):
        check_watchdog_fits(config(tmp_path), notifier)


def test_a_run_without_a_watchdog_is_never_refused_for_its_timeouts(tmp_path: Path) -> None:
    check_watchdog_fits(config(tmp_path, 'call_timeout = "60s"\n'), Notifier(False, None))


def test_check_passes_the_shipped_timeouts_against_the_shipped_watchdog(tmp_path: Path) -> None:
    assert check._watchdog(config(tmp_path), SHIPPED_WATCHDOG).ok


def test_check_fails_a_silence_of_half_the_watchdog_naming_the_keys_to_lower(tmp_path: Path) -> None:
    line = check._watchdog(config(tmp_path), 2 * SHIPPED_SILENCE)

    assert not line.ok and "backend.call_timeout + retry_backoff_max" in line.fix


def test_check_without_a_watchdog_found_passes_as_not_checked(tmp_path: Path) -> None:
    line = check._watchdog(config(tmp_path), None)

    assert line.ok and "not checked" in line.detail
