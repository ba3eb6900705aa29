"""`email-sync check`: everything a run depends on, one line each with its fix, without syncing anyone.

The sync endpoint is probed with OPTIONS: it has no side effects (RFC 9110), so nobody is synced, and a 404 is
exactly the seed's wrong-path bug, while a route that exists answers 2xx, 204, 401/403 or 405 (a POST-only route
that does not implement OPTIONS).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect

from emailsync import backend, db
from emailsync.config import BACKEND_TOKEN_CREDENTIAL, DATABASE_URL_CREDENTIAL, Config
from emailsync.errors import EmailSyncError

PACKAGED_VENV = Path("/usr/lib/email-sync/venv")
# Where systemd looks for system units, highest priority first (systemd.unit(5)).
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)
DEPENDENCIES = ("sqlalchemy", "psycopg2", "urllib3", "structlog", "sdnotify")
_SPAN = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|min|h|d)")
_SPAN_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # shown, but does not fail the check command

    def line(self) -> str:
        mark = "✔" if self.ok else ("!" if self.warning else "✘")
        return f"{mark} {self.name}: {self.detail}" + (f"\n    fix: {self.fix}" if self.fix and not self.ok else "")


def run_checks(config: Config) -> list[Check]:
    """Every check, in the order a run depends on them; a failed database check skips the database's details."""
    checks = [Check("config", True, f"{config.source} is valid")]
    checks += _secret_files(config)
    checks.append(_interpreter())
    checks.append(_dependencies())
    checks += _database(config)
    checks.append(_guarded("backend health", lambda: _backend_health(config)))
    checks.append(_guarded("sync endpoint", lambda: _sync_endpoint(config)))
    checks.append(_watchdog(config))
    return checks


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except EmailSyncError as error:
        return Check(name, False, str(error), f"see the message; `email-sync run` would exit {error.exit_code}")


def _secret_files(config: Config) -> list[Check]:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    checks = []
    for credential, key, path in (
        (DATABASE_URL_CREDENTIAL, "database.url_file", config.database_url_file),
        (BACKEND_TOKEN_CREDENTIAL, "backend.token_file", config.backend_token_file),
    ):
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
    engine = db.connect(config.database)
    try:
        db.check_ready(engine, config.users)
    except EmailSyncError as error:
        fix = "run `email-sync migrate`" if "migrate" in str(error) else "see the message"
        return [Check("database", False, str(error), fix)]
    else:
        return [
            Check("database", True, f"reachable, schema v{db.SCHEMA_VERSION}, {config.users.table} ok"),
            _app_index(engine, config),
        ]
    finally:
        engine.dispose()


def _app_index(engine: Engine, config: Config) -> Check:
    """Warn (not fail) when the app's last-sync column has no index: email-sync never alters the app's schema."""
    schema, _, table = config.users.table.rpartition(".")
    indexes = inspect(engine).get_indexes(table, schema=schema or None)
    indexed = any(index["column_names"][:1] == [config.users.last_sync_column] for index in indexes)
    return Check(
        "app index",
        indexed,
        f"{config.users.table}.{config.users.last_sync_column} "
        + ("is indexed" if indexed else "has no index: each run scans the whole table"),
        "email-sync migrate --print-app-indexes shows the CREATE INDEX to run",
        warning=not indexed,
    )


def _backend_health(config: Config) -> Check:
    backend.check_health(config.backend)
    return Check("backend health", True, f"{config.backend.health_url} answered 2xx")


def _sync_endpoint(config: Config) -> Check:
    url = config.backend.sync_url
    with backend.Session(config.backend) as session:
        try:
            status = session.call("OPTIONS", url).status
        except backend.CallFailed as failure:
            return Check("sync endpoint", False, f"{url}: {failure.description}", "check backend.base_url")
    if status == 404 or 300 <= status < 400:
        return Check(
            "sync endpoint",
            False,
            f"OPTIONS {url} answered {status}",
            "set backend.sync_path to the backend's sync route (e.g. /api/v1/test/sync/start)",
        )
    return Check("sync endpoint", True, f"{url} exists (OPTIONS answered {status})")


def _watchdog(config: Config) -> Check:
    watchdog = unit_watchdog()
    silence = config.backend.longest_silence
    if watchdog is None:
        return Check("watchdog", True, "not checked: no email-sync.service with a WatchdogSec= here")
    fits = silence < watchdog / 2
    return Check(
        "watchdog",
        fits,
        f"longest silence {silence:g}s vs WatchdogSec={watchdog:g}s",
        "lower backend.connect_timeout + read_timeout + retry_backoff_max below WatchdogSec/2",
    )


def _seconds(span: str) -> float | None:
    """A systemd time span ("2min 30s", "150", "infinity") in seconds; None for none/infinity."""
    value = span.strip().replace(" ", "")
    if not value or value in ("0", "infinity"):
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    return sum(float(n) * _SPAN_SECONDS[unit] for n, unit in _SPAN.findall(value)) or None


def unit_watchdog(unit_dirs: tuple[Path, ...] = UNIT_DIRS) -> float | None:
    """email-sync.service's WatchdogSec in seconds, or None. As the running systemd has it when it says; else (no
    running systemd, or a unit that never ran) from the installed unit file and its drop-ins, so `check` compares
    before `systemctl enable` too."""
    systemctl = shutil.which("systemctl")
    if systemctl is not None and Path("/run/systemd/system").is_dir():
        result = subprocess.run(
            [systemctl, "show", "email-sync.service", "-p", "LoadState,WatchdogUSec"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        shown = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        # A unit that has not run yet shows WatchdogUSec=infinity (seen on systemd 252 and 257) even with
        # WatchdogSec= set: then the files say what its first run gets.
        if result.returncode == 0 and shown.get("LoadState") == "loaded" and _seconds(shown.get("WatchdogUSec", "")):
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
