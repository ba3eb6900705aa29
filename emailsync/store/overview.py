"""The users `status` and `email-sync users` list: who is failing, who is leased, who is due. Each read runs in the
caller's transaction, so `status` takes them all from one snapshot; ages come from the database clock."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from emailsync.config.settings import Config
from emailsync.store import state
from emailsync.store.backlog import rounded
from emailsync.store.db import RUNS, STATE, dialect_of
from emailsync.store.users import UsersTable


@dataclass(frozen=True)
class UserRow:
    user_id: str
    failures: int
    next_attempt_in_s: float | None
    last_error: str | None
    lease_owner: str | None
    lease_host: str | None
    lease_left_s: float | None


def count_leased(connection: Connection) -> int:
    """Users a run holds right now."""
    count = connection.execute(
        text(f"SELECT count(*) FROM {STATE} WHERE {state.live_lease(dialect_of(connection), '')}")
    ).scalar()
    return int(count or 0)


def listed(connection: Connection, which: str, limit: int) -> list[UserRow]:
    """Users in our state table: ``failing`` (in backoff or failed last time, not parked) or ``leased``."""
    d = dialect_of(connection)
    where = {
        "failing": f"{state.failing('s')} AND NOT {state.parked('s')} ORDER BY s.next_attempt_at",
        "leased": f"{state.live_lease(d, 's')} ORDER BY s.lease_until",
    }[which]
    rows = connection.execute(
        text(
            f"SELECT s.user_id, s.failures, -({d.age('s.next_attempt_at')}) AS next_in, s.last_error, "
            f"s.lease_owner, r.host, -({d.age('s.lease_until')}) AS lease_left "
            f"FROM {STATE} AS s LEFT JOIN {RUNS} AS r ON r.id = s.lease_owner WHERE {where} LIMIT :limit"
        ),
        {"limit": limit},
    ).all()
    return [
        UserRow(
            row.user_id,
            row.failures,
            rounded(row.next_in),
            row.last_error,
            row.lease_owner,
            row.host,
            rounded(row.lease_left),
        )
        for row in rows
    ]


def due(connection: Connection, config: Config, limit: int) -> list[tuple[str, float | None]]:
    """(user id, seconds since last sync or None for never) of the users a run would take now, oldest first."""
    d = dialect_of(connection)
    users = UsersTable(config.users, d)
    rows = connection.execute(
        text(f"SELECT {users.key}, {d.age(users.last_sync)} {users.due_from()} {users.oldest_first} LIMIT :limit"),
        {"interval": config.sync.interval, "limit": limit},
    ).all()
    return [(row[0], rounded(row[1])) for row in rows]
