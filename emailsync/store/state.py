"""What the columns of our state table (``email_sync_user_state``) mean, said once for every statement about it: the
named conditions on a user's row, what returning a user writes, and the mark of a user the runs quarantined.

A condition is SQL about one row of the table, named ``table`` as the statement names it: its alias (``s``), or ""
where the statement names its columns bare. Each is true or false, never NULL, for every row the code writes (a
column it compares is set or tested for NULL first), so ``NOT`` a condition is its exact opposite, and PostgreSQL
plans it as such.
"""

from __future__ import annotations

from emailsync.store.db import Dialect

QUARANTINE = "quarantine"  # parked_by of a user parked by the run itself, after permanent failures in a row
# What returning a user sets: no backoff, no count of failures of either kind.
CLEAN_SLATE = "failures = 0, permanent_failures = 0, next_attempt_at = NULL, last_error = NULL"


def live_lease(d: Dialect, table: str) -> str:
    """A run holds the user: its lease (owner and end, written together) has not run out by the database clock."""
    return f"({_column(table, 'lease_owner')} IS NOT NULL AND {_column(table, 'lease_until')} > {d.now})"


def in_backoff(d: Dialect, table: str) -> str:
    """The user's next attempt is not due yet by the database clock; a user with none set is not in backoff."""
    at = _column(table, "next_attempt_at")
    return f"({at} IS NOT NULL AND {at} > {d.now})"


def failing(table: str) -> str:
    """The user's last attempt failed: it is in backoff, or its backoff is over and the retry not yet made."""
    return f"({_column(table, 'failures')} > 0)"


def parked(table: str) -> str:
    """Set aside, by an operator or by the quarantine: no run claims the user until `unpark` (or `reset`, for the
    quarantine)."""
    return f"({_column(table, 'parked_at')} IS NOT NULL)"


def _column(table: str, name: str) -> str:
    return f"{table}.{name}" if table else name
