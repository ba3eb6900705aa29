"""The runs table: one row per run, written at its start and its end, and what `status` and the metrics read
back from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from emailsync.model import RunCounts
from emailsync.redaction import redact_and_truncate
from emailsync.store.db import MAX_ERROR_CHARS, RUNS, Dialect, dialect_of, with_retry

RELEASE_SINCE = 5  # the schema version whose step added the release column (emailsync/store/schema.py)
STOOD_ASIDE = "stood_aside"  # the outcome of a run whose release is older than the database's schema
# A stopped run is a healthy one: systemd asked it to stop, an operator paused or drained the fleet, or the host
# awaits an upgrade while the upgraded hosts do the work.
HEALTHY_OUTCOMES = ("ok", "interrupted", "paused", "drained", STOOD_ASIDE)


def start(engine: Engine, run_id: str, host: str, pid: int, release: str) -> None:
    d = dialect_of(engine)
    with_retry(
        engine,
        lambda connection: connection.execute(
            text(
                f"INSERT INTO {RUNS} (id, host, pid, release, started_at, outcome) "
                f"VALUES (:id, :host, :pid, :release, {d.now}, 'running') ON CONFLICT (id) DO NOTHING"
            ),
            {"id": run_id, "host": host, "pid": pid, "release": release},
        ),
    )


def finish(engine: Engine, run_id: str, counts: RunCounts, outcome: str, error: str | None) -> None:
    d = dialect_of(engine)
    with_retry(
        engine,
        lambda connection: connection.execute(
            text(f"""UPDATE {RUNS} SET finished_at = {d.now}, due = :due, synced = :synced, failed = :failed,
                        skipped = :skipped, outcome = :outcome, error = :error WHERE id = :id"""),
            {
                "id": run_id,
                "due": counts.due,
                "synced": counts.synced,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "outcome": outcome,
                "error": redact_and_truncate(error, MAX_ERROR_CHARS) if error else None,
            },
        ),
    )


def recent(connection: Connection, d: Dialect, limit: int) -> list[Any]:
    """The last ``limit`` runs, newest first, with their duration in seconds."""
    return list(
        connection.execute(
            text(
                f"SELECT started_at, host, due, synced, failed, skipped, outcome, error, "
                f"{d.age('started_at')} - {d.age('finished_at')} AS duration "
                f"FROM {RUNS} ORDER BY started_at DESC LIMIT {int(limit)}"
            )
        )
    )


def since(connection: Connection, d: Dialect, seconds: float) -> list[Any]:
    """Every run started within the last ``seconds``: its age in seconds, what it synced, its outcome."""
    return list(
        connection.execute(
            text(
                f"SELECT {d.age('started_at')} AS age, synced, outcome "
                f"FROM {RUNS} WHERE started_at > {d.shifted(':back')}"
            ),
            {"back": -seconds},
        )
    )


def last_success_age(connection: Connection, d: Dialect) -> float | None:
    """Seconds since the last healthy run finished, by the database clock; None when none ever did."""
    age = connection.execute(
        text(f"SELECT min({d.age('finished_at')}) FROM {RUNS} WHERE outcome IN :healthy").bindparams(
            bindparam("healthy", expanding=True)
        ),
        {"healthy": list(HEALTHY_OUTCOMES)},
    ).scalar()
    return None if age is None else float(age)


def last_ok_age(connection: Connection, d: Dialect, host: str) -> float | None:
    """Seconds since a run of ``host`` last ended ok, by the database clock; None when none ever did. Paused,
    drained and interrupted runs are healthy but did not sync the due users to the end: they do not count."""
    age = connection.execute(
        text(f"SELECT min({d.age('finished_at')}) FROM {RUNS} WHERE host = :host AND outcome = 'ok'"), {"host": host}
    ).scalar()
    return None if age is None else float(age)


def totals(connection: Connection, host: str) -> list[Any]:
    """Per outcome, the finished runs of ``host`` and their synced, failed and skipped users: counters that stay
    true across the short-lived processes of the runs, as long as rows are not deleted."""
    return list(
        connection.execute(
            text(
                f"SELECT outcome, count(*) AS runs, coalesce(sum(synced), 0) AS synced, "
                f"coalesce(sum(failed), 0) AS failed, coalesce(sum(skipped), 0) AS skipped "
                f"FROM {RUNS} WHERE host = :host AND finished_at IS NOT NULL GROUP BY outcome ORDER BY outcome"
            ),
            {"host": host},
        )
    )


@dataclass(frozen=True)
class AwaitingUpgrade:
    host: str
    release: str | None
    last_run_age_s: float  # since its latest run started (which stood aside), by the database clock


def awaiting_upgrade(connection: Connection, d: Dialect, within: float) -> list[AwaitingUpgrade]:
    """The hosts whose latest run, among those started in the last ``within`` seconds, stood aside because their
    release is older than the database's schema: what `status` and the metrics show as awaiting an upgrade. A host
    that stopped running long ago is not counted (it awaits nothing: `status` shows when no run succeeds)."""
    rows = connection.execute(
        text(
            f"SELECT host, release, {d.age('started_at')} AS age FROM ("
            f"SELECT host, release, outcome, started_at, "
            f"row_number() OVER (PARTITION BY host ORDER BY started_at DESC) AS latest "
            f"FROM {RUNS} WHERE started_at > {d.shifted('-:within')}) AS recent "
            f"WHERE latest = 1 AND outcome = :stood_aside ORDER BY host"
        ),
        {"within": within, "stood_aside": STOOD_ASIDE},
    ).all()
    return [AwaitingUpgrade(row.host, row.release, round(float(row.age))) for row in rows]
