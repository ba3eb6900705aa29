"""Fixtures of the systemd end-to-end tests: a fresh PostgreSQL database, a booted Debian 12 container with
email-sync installed the way the .deb will install it, and a per-test scenario (units reset, a fresh backend).

Run with ``make e2e`` (root; ~2 min the first time to build the cached rootfs). Without root the tests are skipped,
except under CI=true, where any failure to set up, including not being root, fails the run loudly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from emailsync.store import db
from harness.app_database import USERS_TABLE
from harness.backend import Backend
from tests.e2e.container import (
    CACHE,
    PROJECT,
    VENV,
    WHEELHOUSE,
    dependency_wheelhouse,
    email_sync_wheel,
    pristine_rootfs,
    reap_stale_sessions,
)
from tests.nspawn import Container, log, run_host

IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN_URL = db.driver_url(
    os.environ.get("EMAIL_SYNC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
UNIT = "email-sync.service"
TIMER = "email-sync.timer"
ALERT = "email-sync-alert@.service"
ALERT_RUN = f"email-sync-alert@{UNIT}.service"  # the instance that OnFailure= starts
STREAK_FILE = "/var/lib/private/email-sync/failure-streak.json"  # StateDirectory= under DynamicUser=
METRICS = "/var/lib/email-sync-metrics/email-sync.prom"  # metrics.textfile's default, the package's place
UNIT_DIR = "/usr/lib/systemd/system"  # where the .deb puts them; tests' drop-ins go to /etc/systemd/system
CONFIG = "/etc/email-sync/email-sync.toml"
CREDSTORE = "/etc/credstore"
DATABASE_CREDENTIAL = f"{CREDSTORE}/email-sync.database-url"
TOKEN_CREDENTIAL = f"{CREDSTORE}/email-sync.backend-token"

# Every last_sync write, recorded by a trigger: "synced exactly once" is checked in the database itself.
APP_SCHEMA = [
    USERS_TABLE["postgresql"],
    "CREATE TABLE last_sync_writes (user_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    """CREATE FUNCTION record_last_sync_write() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO last_sync_writes (user_id) VALUES (NEW.id); RETURN NEW; END $$""",
    """CREATE TRIGGER last_sync_written AFTER UPDATE OF last_sync ON users FOR EACH ROW
       WHEN (NEW.last_sync IS DISTINCT FROM OLD.last_sync) EXECUTE FUNCTION record_last_sync_write()""",
]


def setup_failed(message: str) -> None:
    """No environment for e2e: skip on a developer machine, fail in CI."""
    if IN_CI:
        pytest.fail(f"e2e setup: {message}", pytrace=False)
    pytest.skip(f"e2e setup: {message}")


@dataclass
class AppDatabase:
    """The app's PostgreSQL database for this session, seen from the host (and, by URL, from the container)."""

    name: str
    url: str  # what email-sync gets, through its credential
    engine: Engine

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), params)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.begin() as connection:
            return list(connection.execute(text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.begin() as connection:
            return connection.execute(text(sql), params).scalar()

    def reset(self) -> None:
        self.execute(f"TRUNCATE users, last_sync_writes, {db.STATE}, {db.RUNS}")

    def add_users(self, count: int, start: int = 1) -> list[int]:
        ids = list(range(start, start + count))
        with self.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO users (id, email) VALUES (:id, :email)"),
                [{"id": i, "email": f"user{i}@example.com"} for i in ids],
            )
        return ids

    def synced(self) -> set[int]:
        return {row[0] for row in self.rows("SELECT id FROM users WHERE last_sync IS NOT NULL")}

    def writes(self) -> dict[int, int]:
        """How many times each user's last_sync was written."""
        return {row[0]: row[1] for row in self.rows("SELECT user_id, count(*) FROM last_sync_writes GROUP BY 1")}

    def leased(self) -> list[str]:
        return [row[0] for row in self.rows(f"SELECT user_id FROM {db.STATE} WHERE lease_owner IS NOT NULL")]

    def live_leases(self) -> int:
        live = f"SELECT count(*) FROM {db.STATE} WHERE lease_owner IS NOT NULL AND lease_until > now()"
        return int(self.scalar(live))

    def runs(self) -> list[Any]:
        return self.rows(f"SELECT * FROM {db.RUNS} ORDER BY started_at")


@pytest.fixture(scope="session")
def app_database() -> Iterator[AppDatabase]:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"email_sync_e2e_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:

            def drop(stale: str) -> None:
                if re.fullmatch(r"email_sync_e2e_[0-9a-f]{10}", stale):
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)'))

            if os.geteuid() == 0:
                reap_stale_sessions(drop)
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 -- any failure here means: no database for the e2e tests
        admin.dispose()
        pytest.fail(f"PostgreSQL unreachable at {ADMIN_URL} (set EMAIL_SYNC_TEST_DATABASE_URL): {error}")
    url = make_url(ADMIN_URL).set(database=name)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in APP_SCHEMA:
                connection.execute(text(statement))
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        yield AppDatabase(name, plain, engine)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


INSTALL = f"""
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
python3 -m venv {VENV}
{VENV}/bin/pip install --quiet --no-index --find-links {WHEELHOUSE} --require-hashes -r {WHEELHOUSE}/requirements.lock
{VENV}/bin/pip install --quiet --no-index --no-deps {WHEELHOUSE}/email_sync-*.whl
# The service runs with /usr read-only and PYTHONDONTWRITEBYTECODE: compile everything now.
{VENV}/bin/python -m compileall -q {VENV}/lib
{VENV}/bin/email-sync --version
"""


@dataclass
class System:
    container: Container
    database: AppDatabase
    setup_seconds: float


@pytest.fixture(scope="session")
def system(app_database: AppDatabase) -> Iterator[System]:
    """The booted container with email-sync installed, migrated against the session's database."""
    if os.geteuid() != 0:
        setup_failed("needs root (debootstrap, systemd-nspawn, nsenter)")
    started = time.monotonic()
    rootfs = pristine_rootfs()
    dependencies = dependency_wheelhouse(PROJECT / "requirements.lock")
    session = Path(tempfile.mkdtemp(prefix="session-", dir=CACHE))
    (session / "owner.pid").write_text(f"{os.getpid()}\n")
    (session / "database").write_text(app_database.name + "\n")
    container: Container | None = None
    try:
        wheelhouse = session / "wheelhouse"
        shutil.copytree(dependencies, wheelhouse, copy_function=os.link)
        log(f"building the email-sync wheel ({time.monotonic() - started:.1f}s)")
        email_sync_wheel(wheelhouse)
        root = session / "root"
        log(f"copying the rootfs ({time.monotonic() - started:.1f}s)")
        run_host(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], timeout=300)
        container = Container(root, session / "console.log", binds_ro=[(wheelhouse, WHEELHOUSE)])
        log(f"booting {root} ({time.monotonic() - started:.1f}s)")
        container.boot()
        log(f"installing email-sync into the container ({time.monotonic() - started:.1f}s)")
        container.sh(INSTALL, timeout=300)
        for unit in (UNIT, TIMER, ALERT):
            container.write(f"{UNIT_DIR}/{unit}", (PROJECT / "systemd" / unit).read_text())
        # The metrics group and directory, as the .deb's postinst makes them (dh_installsysusers, dh_installtmpfiles):
        # the unit's SupplementaryGroups= fails the start without the group.
        container.write("/usr/lib/sysusers.d/email-sync.conf", (PROJECT / "debian" / "email-sync.sysusers").read_text())
        container.write("/usr/lib/tmpfiles.d/email-sync.conf", (PROJECT / "debian" / "email-sync.tmpfiles").read_text())
        container.run("systemd-sysusers", "email-sync.conf")
        container.run("systemd-tmpfiles", "--create", "email-sync.conf")
        container.path(CREDSTORE).mkdir(mode=0o700, exist_ok=True)
        container.write(DATABASE_CREDENTIAL, app_database.url + "\n", mode=0o600)
        write_config(container, {"backend": {"base_url": "http://127.0.0.1:9"}})
        container.run("systemctl", "daemon-reload")
        # As an operator would run it once: root reads the credential source directly.
        container.run(
            f"{VENV}/bin/email-sync",
            "migrate",
            env={"EMAIL_SYNC_DATABASE_URL_FILE": DATABASE_CREDENTIAL},
        )
        setup = time.monotonic() - started
        log(f"container ready in {setup:.1f}s")
        yield System(container, app_database, setup)
    finally:
        if container is not None:
            container.poweroff()
        shutil.rmtree(session, ignore_errors=True)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def write_config(container: Container, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items())
    # No secrets in here: the dynamic user must be able to read it.
    container.write(CONFIG, "\n".join(lines) + "\n", mode=0o644)


def message_text(entry: dict[str, Any]) -> str:
    """MESSAGE as text; journalctl -o json gives a list of bytes for non-printable or non-UTF-8 messages."""
    message = entry.get("MESSAGE", "")
    return bytes(message).decode("utf-8", "replace") if isinstance(message, list) else str(message)


@dataclass
class Scenario:
    """One test's view: the container with the units reset, the database emptied, a fresh backend."""

    container: Container
    database: AppDatabase
    backend: Backend
    cursor: str = ""
    config: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self) -> None:
        c = self.container
        c.run("systemctl", "stop", TIMER, UNIT, timeout=90)
        for unit in (UNIT, TIMER, ALERT):
            shutil.rmtree(c.path(f"/etc/systemd/system/{unit}.d"), ignore_errors=True)
        c.path(TOKEN_CREDENTIAL).unlink(missing_ok=True)
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "reset-failed", UNIT, TIMER, ALERT_RUN, check=False)
        c.path(STREAK_FILE).unlink(missing_ok=True)  # each test starts without a failure streak
        self.database.reset()
        self.configure()
        self.cursor = c.cursor()

    def configure(self, **sections: dict[str, Any]) -> None:
        config: dict[str, dict[str, Any]] = {"backend": {"base_url": self.backend.base_url}}
        for name, keys in sections.items():
            config.setdefault(name, {}).update(keys)
        self.config = config
        write_config(self.container, config)

    def dropin(self, unit: str, name: str, body: str) -> None:
        self.container.write(f"/etc/systemd/system/{unit}.d/{name}.conf", body)
        self.container.run("systemctl", "daemon-reload")

    def state(self) -> dict[str, str]:
        return self.container.show(
            UNIT, "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "InvocationID", "MainPID"
        )

    def start(self) -> None:
        """systemctl start: returns once email-sync sent READY=1 (or failed before)."""
        self.container.run("systemctl", "start", UNIT, check=False, timeout=60)

    def wait_finished(self, timeout: float) -> dict[str, str]:
        def finished() -> dict[str, str] | None:
            state = self.state()
            return state if state["ActiveState"] in ("inactive", "failed") else None

        result: dict[str, str] = self.container.wait_for(f"{UNIT} to finish", finished, timeout)
        return result

    def run_once(self, timeout: float = 60) -> dict[str, str]:
        self.start()
        return self.wait_finished(timeout)

    def journal(self) -> list[dict[str, Any]]:
        """What ``journalctl -u email-sync.service`` shows since the test began: the service's own lines and
        systemd's about it. The unit match is applied here, because journalctl 252 with a match and
        --after-cursor skips the first matching entry (it steps over the cursor's entry, assuming it matches)."""
        return [
            entry
            for entry in self.container.journal(after=self.cursor)
            if entry.get("_SYSTEMD_UNIT") == UNIT
            or (entry.get("_PID") == "1" and entry.get("UNIT") == UNIT)
            or (entry.get("_UID") == "0" and UNIT in (entry.get("OBJECT_SYSTEMD_UNIT"), entry.get("COREDUMP_UNIT")))
        ]

    def our_lines(self) -> list[dict[str, Any]]:
        """Entries written by the email-sync process itself (its stdout/stderr), not by systemd."""
        return [
            e
            for e in self.journal()
            if e.get("_SYSTEMD_UNIT") == UNIT and e.get("SYSLOG_IDENTIFIER") == "email-sync" and e.get("_PID") != "1"
        ]

    def events(self) -> list[dict[str, Any]]:
        """email-sync's log lines, parsed (every line must be JSON)."""
        return [json.loads(message_text(e)) for e in self.our_lines()]

    def systemd_lines(self) -> list[dict[str, Any]]:
        """systemd's own messages about the unit (started, exited, watchdog, ...)."""
        return [e for e in self.journal() if e.get("_PID") == "1" and e.get("UNIT") == UNIT]


@pytest.fixture
def e2e(system: System) -> Iterator[Scenario]:
    with Backend() as backend:
        scenario = Scenario(system.container, system.database, backend)
        scenario.reset()
        try:
            yield scenario
        finally:
            system.container.run("systemctl", "stop", TIMER, UNIT, check=False, timeout=90)
