"""Who is waiting for a sync right now, and whether the freshness promise holds: what `status` shows, the metrics
export and the end-of-run ping report. Computed by the database clock, so every host agrees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from emailsync.config.settings import Config
from emailsync.store import control, state
from emailsync.store.db import STATE, dialect_of
from emailsync.store.users import UsersTable
from emailsync.systemd.timespan import brief


@dataclass(frozen=True)
class Freshness:
    """The promise "every user synced within status.max_staleness", over every user of the app (the filter's), in
    backoff or leased too: their mail is as stale. Parked users are not: an operator (or the quarantine, which
    alerts once) set them aside. A user never synced has no age, so cannot break it: a new user
    is due at once anyway, and a run's failures show elsewhere (failed counts, backoff)."""

    max_staleness_s: float
    oldest_sync_age_s: float | None  # since the least recently synced user's last sync (None: nobody synced yet)
    over: int  # users whose last sync is older than max_staleness

    @property
    def holds(self) -> bool:
        return self.over == 0

    def problem(self) -> str:
        return (
            f"{self.over} users not synced within status.max_staleness ({self.max_staleness_s:g}s); "
            f"the oldest {brief(self.oldest_sync_age_s)} ago"
        )


@dataclass(frozen=True)
class Backlog:
    due: int
    never_synced: int
    oldest_age_s: float | None  # since the oldest due user's last sync (None: none due, or all never synced)
    in_backoff: int
    parked: int
    quarantined: int  # of the parked
    freshness: Freshness


def read(connection: Connection, config: Config) -> Backlog:
    """Who is waiting right now, and whether the freshness promise holds: what `status` shows, the metrics export
    and the end-of-run ping report. In the caller's transaction, so `status` reads it in its snapshot."""
    d = dialect_of(connection)
    users = UsersTable(config.users, d)
    limit = config.status.max_staleness
    fresh = connection.execute(
        text(
            f"SELECT max({d.age(users.last_sync)}), "
            f"coalesce(sum(CASE WHEN {d.age(users.last_sync)} > :max_staleness THEN 1 ELSE 0 END), 0) "
            f"{users.promised_from}"
        ),
        {"max_staleness": limit},
    ).one()
    due = connection.execute(
        text(f"SELECT count(*), count(*) - count({users.last_sync}), max({d.age(users.last_sync)}) {users.due_from()}"),
        {"interval": config.sync.interval},
    ).one()
    in_backoff = connection.execute(
        text(
            f"SELECT count(*) FROM {STATE} "
            f"WHERE {state.failing('')} AND {state.in_backoff(d, '')} AND NOT {state.parked('')}"
        )
    ).scalar()
    parked, quarantined = control.count_parked(connection)
    freshness = Freshness(limit, rounded(fresh[0]), int(fresh[1]))
    return Backlog(int(due[0]), int(due[1]), rounded(due[2]), int(in_backoff or 0), parked, quarantined, freshness)


def rounded(value: Any) -> float | None:
    return None if value is None else round(float(value))
