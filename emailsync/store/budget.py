"""The fleet budget's row in ``email_sync_budget``: its statements, which emailsync/sync/budget.py paces the calls by.
Times are Unix seconds on the database clock, so hosts with skewed clocks share one schedule."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from emailsync.store.db import BUDGET, Dialect

NAME = "backend"  # the row: one budget per database, that of the backend every host of the fleet calls


@dataclass(frozen=True)
class BudgetSql:
    """The budget row's statements, their answers in seconds from the database clock's now."""

    d: Dialect

    def ensure_row(self, connection: Connection) -> None:
        connection.execute(
            text(
                f"INSERT INTO {BUDGET} (name, next_slot, cooldown_until) VALUES (:name, 0, 0) "
                "ON CONFLICT (name) DO NOTHING"
            ),
            {"name": NAME},
        )

    def lease(self, connection: Connection, size: int, rate: float) -> tuple[float, float]:
        """Take ``size`` slots: seconds until the first, and until the cooldown ends (<= 0: none)."""
        now, greatest = self.d.epoch, self.d.greatest
        row = connection.execute(
            text(
                f"UPDATE {BUDGET} SET next_slot = {greatest('next_slot', 'cooldown_until', now)} + :span "
                f"WHERE name = :name RETURNING next_slot - :span - {now}, cooldown_until - {now}"
            ),
            {"name": NAME, "span": size / rate},
        ).one()
        return float(row[0]), float(row[1])

    def cooldown_in(self, connection: Connection) -> float:
        value = connection.execute(
            text(f"SELECT cooldown_until - {self.d.epoch} FROM {BUDGET} WHERE name = :name"), {"name": NAME}
        ).scalar_one()
        return float(value)

    def cool_down(self, connection: Connection, seconds: float, host: str) -> None:
        now, greatest = self.d.epoch, self.d.greatest
        connection.execute(
            text(
                f"UPDATE {BUDGET} SET cooldown_until = {greatest('cooldown_until', f'{now} + :seconds')}, "
                "cooldown_by = :host WHERE name = :name"
            ),
            {"name": NAME, "seconds": seconds, "host": host},
        )
