"""The app's users table as the tests, the benchmark and the demo make it: the three columns email-sync reads
(id, email, last_sync), and user N at userN@example.com."""

from __future__ import annotations

USERS_TABLE = {
    "postgresql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, last_sync timestamptz)",
    "sqlite": "CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL, last_sync text)",
}


def email(number: int) -> str:
    """User ``number``'s address."""
    return f"user{number}@example.com"


def numbered_users(first: str, last: str, last_sync: str = "NULL") -> str:
    """PostgreSQL: one INSERT of users ``first`` to ``last``, however many, each with its email() and ``last_sync``.
    All three are SQL expressions: a driver's placeholder, a subquery, ``now()``."""
    return (
        "INSERT INTO users (id, email, last_sync) "
        f"SELECT g, 'user' || g || '@example.com', {last_sync} FROM generate_series({first}, {last}) AS g"
    )
