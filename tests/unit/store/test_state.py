"""The named conditions on our state table (emailsync/store/state.py), run on an in-memory SQLite database with
email-sync's own schema: each holds for the rows it names, and NOT it for exactly the others."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

import pytest

from emailsync.store import state
from emailsync.store.db import STATE, Dialect
from emailsync.store.schema import STEPS

SQLITE = Dialect("sqlite")
NEVER = "NULL"

# Rows as the code writes them, and as the tests write them by hand (a backoff ended by clearing next_attempt_at).
ROWS = {
    "untouched": {},
    "leased": {"lease_owner": "'run-a'", "lease_until": SQLITE.shifted("600")},
    "lease run out": {"lease_owner": "'run-a'", "lease_until": SQLITE.shifted("-1")},
    "lease released": {"lease_owner": NEVER, "lease_until": NEVER},
    "waiting to retry": {"failures": "2", "next_attempt_at": SQLITE.shifted("600")},
    "retry due": {"failures": "2", "next_attempt_at": SQLITE.shifted("-1")},
    "retry due, its time cleared": {"failures": "2", "next_attempt_at": NEVER},
    "parked": {"parked_at": SQLITE.now, "parked_by": "'ops'"},
    "quarantined": {"failures": "3", "parked_at": SQLITE.now, "parked_by": f"'{state.QUARANTINE}'"},
}


@pytest.fixture(scope="module")
def database() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    for step in STEPS:
        for statement in step.statements(SQLITE):
            connection.execute(statement)
    for name, columns in ROWS.items():
        names = "".join(f", {column}" for column in columns)
        values = "".join(f", {value}" for value in columns.values())
        connection.execute(f"INSERT INTO {STATE} (user_id{names}) VALUES ('{name}'{values})")
    yield connection
    connection.close()


def rows_where(database: sqlite3.Connection, table: str, condition: str) -> set[str]:
    """The rows that meet ``condition``, the table named ``table`` in the statement ("": not named at all)."""
    alias = f" AS {table}" if table and table != STATE else ""
    return {row[0] for row in database.execute(f"SELECT user_id FROM {STATE}{alias} WHERE {condition}")}


TABLES = ["s", STATE, ""]  # an alias, the table's own name, bare columns


CONDITIONS: dict[str, tuple[Callable[[str], str], set[str]]] = {
    "live lease": (lambda table: state.live_lease(SQLITE, table), {"leased"}),
    "in backoff": (lambda table: state.in_backoff(SQLITE, table), {"waiting to retry"}),
    "failing": (
        state.failing,
        {"waiting to retry", "retry due", "retry due, its time cleared", "quarantined"},
    ),
    "parked": (state.parked, {"parked", "quarantined"}),
}


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("name", CONDITIONS)
def test_a_condition_holds_for_the_rows_it_names(database: sqlite3.Connection, name: str, table: str) -> None:
    condition, rows = CONDITIONS[name]

    assert rows_where(database, table, condition(table)) == rows


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("name", CONDITIONS)
def test_not_a_condition_holds_for_every_other_row(database: sqlite3.Connection, name: str, table: str) -> None:
    condition, rows = CONDITIONS[name]

    assert rows_where(database, table, f"NOT {condition(table)}") == set(ROWS) - rows
