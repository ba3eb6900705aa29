"""`email-sync check`: everything a run depends on, one line each with its fix, without syncing anyone.

The sync endpoint is probed with OPTIONS: it has no side effects (RFC 9110), so nobody is synced, and a 404 is
exactly a wrong backend.sync_path, while a route that exists answers 2xx, 204, 401/403 or 405 (a POST-only route
that does not implement OPTIONS).
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy import Engine

from emailsync.config.credentials import BACKEND_TOKEN_CREDENTIAL, DATABASE_URL_CREDENTIAL
from emailsync.config.settings import Config
from emailsync.errors import EmailSyncError, TemporaryError
from emailsync.model import Kind
from emailsync.store import control, db, schema
from emailsync.sync import answers, backend
from emailsync.systemd import systemctl, timespan
from emailsync.systemd.notify import WatchdogSettings

PACKAGED_VENV = Path("/usr/lib/email-sync/venv")
# Where systemd looks for system units, highest priority first (systemd.unit(5)).
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)
DEPENDENCIES = ("sqlalchemy", "psycopg2", "requests", "structlog", "sdnotify", "prometheus_client")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # shown, but does not fail the check command
    skipped: bool = False  # not checked: a key it needs is at fault (that fails the command already)

    def line(self) -> str:
        mark = "✔" if self.ok else ("!" if self.warning else "-" if self.skipped else "✘")
        return f"{mark} {self.name}: {self.detail}" + (f"\n    fix: {self.fix}" if self.fix and not self.ok else "")


def run_checks(config: Config | None, unreadable: Sequence[str] = ()) -> list[Check]:
    """Every check, in the order a run depends on them; a failed database check skips the database's details.

    Every configuration error is listed first, then each check runs if the keys it depends on are valid, and says
    which key to fix first if not. ``config`` is None when the file cannot be read as TOML at all (``unreadable``
    says why): then only what needs no configuration is checked."""
    if config is None:
        checks = [Check("config", False, error) for error in unreadable]
        checks += [_interpreter(), _dependencies()]
        unchecked = ("database", "backend health", "sync endpoint", "watchdog")
        return checks + [_skipped(name, "the config file") for name in unchecked]
    checks = [Check("config", False, error) for error in config.errors]  # each names its key and file
    checks = checks or [Check("config", True, f"{config.source} is valid")]
    checks += _secret_files(config)
    checks.append(_interpreter())
    checks.append(_dependencies())
    checks += _unless(config, ("database", "users"), "database", lambda: _database(config))
    trace = str(uuid.uuid4())  # the check's requests share a trace, as a run's do (their traceparent)
    for name, check in (("backend health", _backend_health), ("sync endpoint", _sync_endpoint)):
        checks += _unless(config, ("backend",), name, partial(_guarded, name, config, check, trace))
    silence = ("backend.call_timeout", "backend.retry_backoff_max")
    checks += _unless(config, silence, "watchdog", lambda: [_watchdog(config, unit_watchdog())])
    checks += _unless(config, ("metrics.textfile",), "metrics", lambda: [_metrics_textfile(config)])
    return checks


def _unless(config: Config, needs: tuple[str, ...], name: str, checks: Callable[[], list[Check]]) -> list[Check]:
    """``checks`` when the keys or sections they need are valid; else one line naming the key to fix first."""
    broken = config.at_fault(*needs)
    return checks() if broken is None else [_skipped(name, broken)]


def _skipped(name: str, what: str) -> Check:
    return Check(name, False, f"not checked: fix {what} first", skipped=True)


def _guarded(name: str, config: Config, check: Callable[[Config, str], Check], trace: str) -> list[Check]:
    try:
        return [check(config, trace)]
    except EmailSyncError as error:
        return [Check(name, False, str(error), f"see the message; `email-sync run` would exit {error.exit_code}")]


def _secret_files(config: Config) -> list[Check]:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    checks = []
    for credential, key, path in (
        (DATABASE_URL_CREDENTIAL, "database.url_file", config.database.url_file),
        (BACKEND_TOKEN_CREDENTIAL, "backend.token_file", config.backend.token_file),
    ):
        if config.at_fault(key):
            continue  # its config line says what is wrong with it
        if credentials and Path(credentials, credential).exists():
            checks.append(Check(f"secret {credential}", True, "passed by systemd (LoadCredential)"))
        elif path:
            mode = Path(path).stat().st_mode
            private = not mode & (stat.S_IRGRP | stat.S_IROTH)
            checks.append(
                Check(
                    f"secret {key}",
                    private,
                    f"{path} is readable " + ("by root only" if private else "by others"),
                    f"chmod 0600 {path}",
                )
            )
    return checks


def _interpreter() -> Check:
    prefix = Path(sys.prefix)
    if PACKAGED_VENV.is_dir():
        ours = prefix.resolve() == PACKAGED_VENV.resolve()
        return Check(
            "interpreter",
            ours,
            f"{sys.executable} (prefix {prefix})",
            f"run {PACKAGED_VENV}/bin/email-sync (or /usr/bin/email-sync), never another python",
        )
    return Check("interpreter", True, f"{sys.executable} (not a packaged install: no {PACKAGED_VENV})")


def _dependencies() -> Check:
    versions = []
    for name in DEPENDENCIES:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            return Check(
                "dependencies",
                False,
                f"cannot import {name}: {error}",
                "reinstall the package (its virtualenv is incomplete)",
            )
        versions.append(f"{name} {getattr(module, '__version__', '?').split(' ')[0]}")
    return Check("dependencies", True, ", ".join(versions))


def _database(config: Config) -> list[Check]:
    try:
        with db.connected(config.database) as engine:
            version = schema.check_for_run(engine, config.users, config.database.migrate)
            if version != schema.SCHEMA_VERSION:  # behind, under database.migrate = "auto"
                return [Check("database", True, _migrates(version, config)), _app_index(engine, config)]
            return [
                Check("database", True, f"reachable, schema v{schema.SCHEMA_VERSION}, {config.users.table} ok"),
                _app_index(engine, config),
                _fleet(engine),
            ]
    except EmailSyncError as error:
        return [_database_failed(error)]


def _migrates(version: int | None, config: Config) -> str:
    """A schema behind this release is no fault under database.migrate = "auto": the next run brings it up to date.
    The fleet's mode is not read: its table or columns may not exist until the run has migrated."""
    found = "no email-sync tables yet" if version is None else f"schema v{version}"
    return (
        f"reachable, {found}: the next `email-sync run` migrates it to v{schema.SCHEMA_VERSION} itself "
        f'(database.migrate = "auto"), {config.users.table} ok'
    )


def _database_failed(error: EmailSyncError) -> Check:
    if "migrate" in str(error):
        fix = "run `email-sync migrate`"
    elif isinstance(error, TemporaryError):
        fix = "see the message; `email-sync run` would exit 75 and the next timer tick retry"
    else:
        fix = "fix what the message names; `email-sync run` would exit 78"
    return Check("database", False, str(error), fix)


def _app_index(engine: Engine, config: Config) -> Check:
    """Warn (not fail) when the app's last-sync column has no index: email-sync never alters the app's schema."""
    indexed = schema.has_app_index(engine, config.users)
    return Check(
        "app index",
        indexed,
        f"{config.users.table}.{config.users.last_sync_column} "
        + ("is indexed" if indexed else "has no index: each run scans the whole table"),
        "email-sync migrate --print-app-indexes shows the CREATE INDEX to run",
        warning=not indexed,
    )


def _fleet(engine: Engine) -> Check:
    """A paused fleet is no fault of the setup, but whoever checks it wonders why nothing is synced."""
    with db.transaction(engine) as connection:
        mode = control.read(connection)
    return Check("fleet", mode.claims, mode.describe(), "`email-sync resume` when it is over", warning=not mode.claims)


def _backend_health(config: Config, trace: str) -> Check:
    backend.check_health(config.backend, trace)
    return Check("backend health", True, f"{config.backend.health_url} answered 2xx")


def _sync_endpoint(config: Config, trace: str) -> Check:
    url = config.backend.sync_url
    with backend.Session(config.backend, trace) as session:
        try:
            status = session.call("OPTIONS", url).status
        except backend.CallFailed as failure:
            return Check("sync endpoint", False, f"{url}: {failure.description}", "check backend.base_url")
    if answers.kind_of(status) is Kind.ENDPOINT and status != 405:  # a POST-only route may refuse OPTIONS with 405
        return Check(
            "sync endpoint",
            False,
            f"OPTIONS {url} answered {status}",
            "set backend.sync_path to the backend's sync route (the app's is /api/v1/test/sync/start, the default)",
        )
    return Check("sync endpoint", True, f"{url} exists (OPTIONS answered {status})")


def _watchdog(config: Config, watchdog: float | None) -> Check:
    """The longest silence of a run against the unit's WatchdogSec (seconds; None: no watchdog found)."""
    silence = config.backend.longest_silence
    if watchdog is None:
        return Check("watchdog", True, "not checked: no email-sync.service with a WatchdogSec= here")
    return Check(
        "watchdog",
        WatchdogSettings(watchdog).allows(silence),
        f"longest silence {silence:g}s vs WatchdogSec={watchdog:g}s",
        "lower backend.call_timeout + retry_backoff_max below WatchdogSec/2",
    )


def _metrics_textfile(config: Config) -> Check:
    """A run writes its metrics to a temporary file beside metrics.textfile, then renames it: try the first half.
    Run as root by hand, this cannot tell whether the unit's dynamic user may write there."""
    textfile = Path(config.metrics.textfile)
    if not config.metrics.textfile:
        return Check("metrics", True, "off (metrics.textfile is empty)")
    try:
        with tempfile.NamedTemporaryFile(dir=textfile.parent, prefix=f"{textfile.name}.check."):
            pass
    except OSError as error:
        return Check(
            "metrics",
            False,
            f"{textfile} cannot be written: {error.strerror}: {textfile.parent}",
            "create the directory, or let the unit write there (docs/operations.md, Metrics)",
        )
    if textfile.suffix != ".prom":
        return Check(
            "metrics", False, f"{textfile} is not a *.prom file", "node_exporter reads only *.prom", warning=True
        )
    return Check("metrics", True, f"{textfile} can be written")


def _seconds(span: str) -> float | None:
    """A systemd time span ("2min 30s", "150") in seconds; None for none ("0", "infinity", nothing)."""
    try:
        usec = timespan.parse(span)
    except ValueError:
        return None
    return usec / timespan.USEC_PER_SEC or None


def unit_watchdog(unit_dirs: tuple[Path, ...] = UNIT_DIRS) -> float | None:
    """email-sync.service's WatchdogSec in seconds, or None. As the running systemd has it when it says; else (no
    running systemd, or a unit that never ran) from the installed unit file and its drop-ins, so `check` compares
    before `systemctl enable` too."""
    shown = systemctl.show("email-sync.service", "LoadState", "WatchdogUSec")
    # A unit that has not run yet shows WatchdogUSec=infinity (seen on systemd 252 and 257) even with
    # WatchdogSec= set: then the files say what its first run gets.
    if shown.get("LoadState") == "loaded" and _seconds(shown.get("WatchdogUSec", "")):
        return _seconds(shown["WatchdogUSec"])
    return _file_watchdog(unit_dirs)


def _file_watchdog(unit_dirs: tuple[Path, ...]) -> float | None:
    """WatchdogSec= as systemd would read it from files: the first unit file found in ``unit_dirs`` (highest
    priority first), then its drop-ins in name order, the last assignment winning."""
    files = [found for found in (d / "email-sync.service" for d in unit_dirs) if found.is_file()][:1]
    if not files:
        return None
    dropins: dict[str, Path] = {}
    for directory in reversed(unit_dirs):
        for dropin in sorted((directory / "email-sync.service.d").glob("*.conf")):
            dropins[dropin.name] = dropin
    value = ""
    for path in [*files, *(dropins[name] for name in sorted(dropins))]:
        for match in re.finditer(r"^\s*WatchdogSec\s*=(.*)$", path.read_text(), re.M):
            value = match[1]
    return _seconds(value)
