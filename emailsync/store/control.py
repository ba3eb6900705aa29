"""Fleet control in the database: pause, drain and resume every host at once, park one user.

The fleet's mode is one row of ``email_sync_fleet`` that every run reads at its start and at most once a second
while it claims, so one command on any host reaches the whole fleet within a second, with no host to log in to
and nothing to restart. The mode lasts until `resume`: a paused or draining fleet's new runs claim nobody. Parked
users stay in our state table (``parked_at``), which the due query skips.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from emailsync.redaction import redact_and_truncate
from emailsync.store import state
from emailsync.store.db import FLEET, MAX_ERROR_CHARS, STATE, Dialect, dialect_of, with_retry

RUNNING, PAUSED, DRAINING = "running", "paused", "draining"
READ_EVERY = 1.0  # seconds: how stale a run's view of the fleet's mode may be


@dataclass(frozen=True)
class FleetMode:
    mode: str
    changed_at: datetime | str | None = None
    changed_by: str | None = None
    reason: str | None = None

    @property
    def claims(self) -> bool:
        return self.mode == RUNNING

    def describe(self) -> str:
        by = f" by {self.changed_by}" if self.changed_by else ""
        return f"{self.mode}{by}{f': {self.reason}' if self.reason else ''}"


def operator() -> str:
    """Who typed the command, as `status` shows it: the login behind sudo where there is one, and the host."""
    return f"{os.environ.get('SUDO_USER') or getpass.getuser()}@{os.uname().nodename}"


def read(connection: Connection) -> FleetMode:
    row = connection.execute(
        text(f"SELECT mode, changed_at, changed_by, reason FROM {FLEET} WHERE name = 'fleet'")
    ).one_or_none()
    return FleetMode(RUNNING) if row is None else FleetMode(row.mode, row.changed_at, row.changed_by, row.reason)


def changed_age(connection: Connection, d: Dialect) -> float | None:
    """Seconds since the fleet's mode last changed, by the database clock; None when it never did."""
    age = connection.execute(text(f"SELECT {d.age('changed_at')} FROM {FLEET} WHERE name = 'fleet'")).scalar()
    return None if age is None else float(age)


def set_mode(engine: Engine, mode: str, by: str, reason: str | None) -> None:
    d = dialect_of(engine)
    with_retry(
        engine,
        lambda connection: connection.execute(
            text(
                f"""INSERT INTO {FLEET} (name, mode, changed_at, changed_by, reason)
                    VALUES ('fleet', :mode, {d.now}, :by, :reason)
                    ON CONFLICT (name) DO UPDATE SET mode = excluded.mode, changed_at = excluded.changed_at,
                        changed_by = excluded.changed_by, reason = excluded.reason"""
            ),
            {"mode": mode, "by": by, "reason": _reason(reason)},
        ),
    )


class FleetWatch:
    """A run's view of the fleet's mode, read from the database at most once per READ_EVERY."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read_at = -READ_EVERY
        self.mode = FleetMode(RUNNING)

    def current(self) -> FleetMode:
        if time.monotonic() - self.read_at >= READ_EVERY:
            self.mode = with_retry(self.engine, read)
            self.read_at = time.monotonic()
        return self.mode


def park(engine: Engine, key: str, by: str, reason: str) -> None:
    """Set one user aside: no run claims it until `unpark`. A call already in flight for it still finishes."""
    d = dialect_of(engine)
    with_retry(
        engine,
        lambda connection: connection.execute(
            text(
                f"""INSERT INTO {STATE} AS s (user_id, failures, parked_at, parked_by, parked_reason, updated_at)
                    VALUES (:key, 0, {d.now}, :by, :reason, {d.now})
                    ON CONFLICT (user_id) DO UPDATE SET parked_at = excluded.parked_at,
                        parked_by = excluded.parked_by, parked_reason = excluded.parked_reason,
                        updated_at = excluded.updated_at"""
            ),
            {"key": key, "by": by, "reason": _reason(reason)},
        ),
    )


def unpark(engine: Engine, key: str) -> bool:
    """Return a parked user, with a clean slate: no backoff, no count of failures. False if it was not parked."""
    d = dialect_of(engine)
    count = with_retry(
        engine,
        lambda connection: (
            connection.execute(
                text(
                    f"""UPDATE {STATE} SET {state.CLEAN_SLATE},
                        parked_at = NULL, parked_by = NULL, parked_reason = NULL, updated_at = {d.now}
                    WHERE user_id = :key AND {state.parked("")}"""
                ),
                {"key": key},
            ).rowcount
        ),
    )
    return bool(count)


@dataclass(frozen=True)
class Parked:
    user_id: str
    parked_at: datetime | str
    age_s: float
    parked_by: str
    reason: str | None


def parked_users(connection: Connection, d: Dialect, limit: int) -> list[Parked]:
    """The parked users, the latest first."""
    rows = connection.execute(text(f"{_parked(d)} ORDER BY parked_at DESC LIMIT :limit"), {"limit": limit}).all()
    return [_parked_of(row) for row in rows]


def parked(engine: Engine, key: str) -> Parked | None:
    """The park of one user, or None."""
    rows = with_retry(
        engine,
        lambda connection: connection.execute(
            text(f"{_parked(dialect_of(engine))} AND user_id = :key"), {"key": key}
        ).all(),
    )
    return _parked_of(rows[0]) if rows else None


def _parked(d: Dialect) -> str:
    return (
        f"SELECT user_id, parked_at, {d.age('parked_at')} AS age, parked_by, parked_reason FROM {STATE} "
        f"WHERE {state.parked('')}"
    )


def _parked_of(row: Any) -> Parked:
    return Parked(row.user_id, row.parked_at, float(row.age), row.parked_by, row.parked_reason)


def count_parked(connection: Connection) -> tuple[int, int]:
    """Parked users, and how many of them the runs quarantined."""
    row: Sequence[Any] = connection.execute(
        text(
            f"SELECT count(*), count(CASE WHEN parked_by = '{state.QUARANTINE}' THEN 1 END) FROM {STATE} "
            f"WHERE {state.parked('')}"
        )
    ).one()
    return int(row[0]), int(row[1])


def _reason(reason: str | None) -> str | None:
    return redact_and_truncate(reason, MAX_ERROR_CHARS) if reason else None
