"""What every tier shares: the app's database as a test sees it (its users table and email-sync's tables, on SQLite
or PostgreSQL), a real HTTP backend on 127.0.0.1, and email-sync run as the operator runs it. Each tier's conftest
says which database ``app_db`` is: tests/unit/conftest.py the embedded SQLite, tests/integration/conftest.py
PostgreSQL (a server of the session's own, started only there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from emailsync.commands import cli
from emailsync.config.settings import DatabaseConfig, SyncConfig, UsersConfig
from emailsync.store import db, schema
from emailsync.store.leases import Leases
from harness.app_database import USERS_TABLE, email
from harness.backend import Backend


@dataclass
class AppDb:
    """The email application's database, as seen by a test: its users table plus email-sync's tables."""

    url: str
    engine: Engine

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def at(self, seconds: float) -> str:
        """SQL for the database clock's now, moved by ``seconds`` (negative: the past), as email-sync writes it."""
        return db.Dialect(self.engine.dialect.name).shifted(repr(float(seconds)))

    def seconds_until(self, column: str, user_id: Any) -> float:
        """How far in the future (by the database clock) a timestamp column of a user's state is."""
        if self.postgres:
            sql = f"SELECT extract(epoch FROM {column} - now()) FROM {db.STATE} WHERE user_id = :key"
        else:
            sql = f"SELECT (julianday({column}) - julianday('now')) * 86400 FROM {db.STATE} WHERE user_id = :key"
        return float(self.scalar(sql, key=str(user_id)))

    def add_users(self, count: int, age: float | None = None, start: int = 1) -> list[int]:
        """Users ``start``.. with emails user<N>@example.com, last synced ``age`` seconds ago (None: never)."""
        ids = list(range(start, start + count))
        last_sync = "NULL" if age is None else self.at(-age)
        with self.engine.begin() as connection:
            connection.execute(
                text(f"INSERT INTO users (id, email, last_sync) VALUES (:id, :email, {last_sync})"),
                [{"id": i, "email": email(i)} for i in ids],
            )
        return ids

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.begin() as connection:
            return connection.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.begin() as connection:
            return list(connection.execute(text(sql), params).all())

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), params)

    def synced_ids(self) -> set[int]:
        """Users whose last_sync is within the last ten minutes by the database clock: synced by this test."""
        return {row[0] for row in self.rows(f"SELECT id FROM users WHERE last_sync > {self.at(-600)}")}

    def last_syncs(self) -> dict[int, Any]:
        return {row[0]: row[1] for row in self.rows("SELECT id, last_sync FROM users")}

    def state(self, user_id: Any) -> Any:
        rows = self.rows(f"SELECT * FROM {db.STATE} WHERE user_id = :key", key=str(user_id))
        return rows[0] if rows else None

    def lease(self, user_id: Any, owner: str, seconds: float) -> None:
        """Give ``owner`` a lease on a user that ends ``seconds`` from now (negative: already expired)."""
        self.execute(
            f"INSERT INTO {db.STATE} (user_id, lease_owner, lease_until) VALUES (:key, :owner, {self.at(seconds)})",
            key=str(user_id),
            owner=owner,
        )

    def leased(self) -> list[str]:
        return [row[0] for row in self.rows(f"SELECT user_id FROM {db.STATE} WHERE lease_owner IS NOT NULL")]

    def drop_our_tables(self) -> None:
        """Remove email-sync's tables, as on a database email-sync was never installed in."""
        for table in OUR_TABLES:
            self.execute(f"DROP TABLE IF EXISTS {table}")

    def runs(self) -> list[Any]:
        return self.rows(f"SELECT * FROM {db.RUNS} ORDER BY started_at")


OUR_TABLES = (db.STATE, db.RUNS, db.VERSION_TABLE, db.BUDGET, db.FLEET)


def _fresh_app_db(url: str, dialect: str) -> AppDb:
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("users", *OUR_TABLES):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        connection.execute(text(USERS_TABLE[dialect]))
    schema.migrate(db.connect(DatabaseConfig(url=url, connect_timeout=5, statement_timeout=30)))
    return AppDb(url, engine)


def a_newer_release_migrated(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> int:
    """The database as a release one step ahead of this one leaves it: a step only the tests know (a column on the
    state table and one on the runs table), applied by `migrate` as that release would. Returns its version."""
    newer = schema.SCHEMA_VERSION + 1

    def _future(d: db.Dialect) -> list[str]:
        return [
            f"ALTER TABLE {db.STATE} ADD COLUMN future_flag integer",
            f"ALTER TABLE {db.RUNS} ADD COLUMN future_note text",
        ]

    engine = db.connect(DatabaseConfig(url=app.url, connect_timeout=5, statement_timeout=30))
    with monkeypatch.context() as patched:
        patched.setattr(schema, "STEPS", (*schema.STEPS, schema.Step(newer, _future)))
        patched.setattr(schema, "SCHEMA_VERSION", newer)
        assert schema.migrate(engine, target=newer) == (newer - 1, newer)
    engine.dispose()
    return newer


def make_cert(directory: Path, name: str, alt_name: str) -> tuple[str, str]:
    """(certificate, key) for ``name``, with ``alt_name`` (e.g. IP:127.0.0.1, DNS:host.test) as its
    subjectAltName, signed by nobody a client trusts."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"]
    subprocess.run(
        ["openssl", *request, "-addext", f"subjectAltName={alt_name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certificate, key) for https://127.0.0.1."""
    return make_cert(tmp_path_factory.mktemp("tls"), "127.0.0.1", "IP:127.0.0.1")


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as server:
        yield server


FAST = {
    "backend": {
        "connect_timeout": "2s",
        "read_timeout": "3s",
        "call_timeout": "5s",
        "retries": 2,
        "retry_backoff": "50ms",
        "retry_backoff_max": "200ms",
        "concurrency": 4,
    },
    "sync": {"shutdown_grace": "3s", "lease": "5m"},
    "metrics": {"textfile": ""},  # the default is the package's directory, absent here; a test that wants one names it
}


def toml_value(value: Any) -> str:
    return (
        json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    )


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class CommandResult:
    """What one email-sync command did: exit code and its log, one parsed JSON object per line."""

    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.split("\n") if line.strip()]  # JSON lines: only \n ends one

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e["event"] == name]
        assert len(found) == 1, f"expected one {name!r} event in:\n{self.stdout}{self.stderr}"
        return found[0]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["level"] in ("error", "critical")]

    def assert_one_clear_error(self, code: int, *words: str) -> str:
        """The documented exit code, exactly one error line naming ``words``, no traceback anywhere."""
        assert self.code == code, f"exit {self.code}, expected {code}:\n{self.stdout}{self.stderr}"
        assert len(self.errors) == 1, self.stdout
        message: str = self.errors[0]["error"]
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        assert "Traceback" not in self.stdout + self.stderr
        return message


class EmailSync:
    """Runs the email-sync command for a test: in-process (fast) or as a real subprocess (signals)."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys
        self.sections: dict[str, dict[str, Any]] = {}

    def configure(self, app: AppDb, server: Backend | None, **sections: dict[str, Any]) -> Path:
        merged = {name: dict(keys) for name, keys in FAST.items()}
        merged["database"] = {"url": app.url}
        merged["backend"]["base_url"] = server.base_url if server else "http://127.0.0.1:9"
        for name, keys in sections.items():
            merged.setdefault(name, {}).update(keys)
        self.sections = merged
        return write_config(self.tmp_path / "email-sync.toml", merged)

    @property
    def config_path(self) -> Path:
        return self.tmp_path / "email-sync.toml"

    def __call__(self, *args: str) -> CommandResult:
        self.capsys.readouterr()
        code = cli.main(["--config", str(self.config_path), *args])
        captured = self.capsys.readouterr()
        return CommandResult(code, captured.out, captured.err)

    def popen(
        self, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "emailsync", "--config", str(self.config_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def subprocess(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CommandResult:
        process = self.popen(*args, env=env)
        stdout, stderr = process.communicate(timeout=timeout)
        return CommandResult(process.returncode, stdout, stderr)


@pytest.fixture
def email_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> EmailSync:
    return EmailSync(tmp_path, capsys)


def leases_by_run(url: str) -> Iterator[Callable[[str], Leases]]:
    """The leases of a run with the given id, on one engine, as `email-sync run` would have it."""
    engine = db.connect(DatabaseConfig(url=url, connect_timeout=5, statement_timeout=30))
    users = UsersConfig("users", "id", "email", "last_sync", "UTC", "")
    sync = SyncConfig(3600, 100, 50, 10, 600, 5, "host", 300, 86400, 20, 3)
    yield lambda run_id: Leases(engine, users, sync, run_id)
    engine.dispose()
