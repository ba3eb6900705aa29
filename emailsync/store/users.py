"""SQL about the app's users table, built from the configured names alone: no connection, so it is read and
tested without a database. Who is due is decided here, once, for the cycle, `status` and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from emailsync.config.settings import UsersConfig
from emailsync.store import state
from emailsync.store.db import STATE, Dialect


@dataclass(frozen=True)
class UsersTable:
    config: UsersConfig
    d: Dialect

    @property
    def table(self) -> str:
        return self.d.quote(self.config.table)

    @property
    def id(self) -> str:
        return f"u.{self.d.quote(self.config.id_column)}"

    @property
    def key(self) -> str:
        """The id as text: our state table's key."""
        return f"CAST({self.id} AS TEXT)"

    @property
    def email(self) -> str:
        return f"u.{self.d.quote(self.config.email_column)}"

    @property
    def last_sync(self) -> str:
        return f"u.{self.d.quote(self.config.last_sync_column)}"

    @property
    def last_sync_target(self) -> str:
        """The column as an UPDATE's SET names it: unqualified."""
        return self.d.quote(self.config.last_sync_column)

    def joined(self, only: str = "") -> str:
        """The app's users joined to our state as ``s`` (NULLs for a user no run has touched yet)."""
        return f"FROM {self.table} AS u LEFT JOIN {STATE} AS s ON s.user_id = {self.key} {only}"

    @property
    def narrowed(self) -> str:
        """users.filter as one more condition of a WHERE, or nothing."""
        return f"AND ({self.config.filter})" if self.config.filter else ""

    @property
    def promised_from(self) -> str:
        """FROM and WHERE of the users the freshness promise is about: synced at least once, not parked."""
        return f"{self.joined()} WHERE {self.last_sync} IS NOT NULL AND NOT {state.parked('s')} {self.narrowed}"

    def due_from(self, only: str = "") -> str:
        """FROM and WHERE of the due users (``:interval`` seconds): stale by the database clock, not in backoff, not
        leased by a live run, not parked. ``only`` narrows the join to our state table, so a lookup of a few users
        can use its primary key."""
        d = self.d
        return f"""
            {self.joined(only)}
            WHERE {d.older_than(self.last_sync, "interval")}
              AND (s.user_id IS NULL OR (
                NOT {state.live_lease(d, "s")} AND NOT {state.in_backoff(d, "s")} AND NOT {state.parked("s")}))
              {self.narrowed}"""

    @property
    def oldest_first(self) -> str:
        """The order runs take due users in; the app index `migrate --print-app-indexes` prints serves it."""
        return f"ORDER BY {self.last_sync} ASC NULLS FIRST"

    @property
    def page_query(self) -> str:
        """The next ``:limit`` due users, oldest first, unlocked: the candidates the next claims try. Without FOR
        UPDATE PostgreSQL can keep only the first rows of its sort (a top-N sort) when the app index is missing."""
        return f"SELECT {self.id} AS id, {self.key} AS key {self.due_from()} {self.oldest_first} LIMIT :limit"

    def claims_from(self, from_where: str) -> str:
        """The columns a Claim is made of, for the users ``from_where`` names (joined to our state as ``s``)."""
        return (
            f"SELECT {self.id} AS id, {self.email} AS email, {self.key} AS key, COALESCE(s.failures, 0) AS failures, "
            f"{self.d.instant(self.last_sync)} AS last_sync, COALESCE(s.results, 0) AS results {from_where}"
        )

    @property
    def claim_query(self) -> str:
        """Which of the users ``:ids`` (``:keys`` as text) are still due: looked up by both primary keys."""
        return self.claims_from(f"{self.due_from('AND s.user_id IN :keys')} AND {self.id} IN :ids")

    @property
    def find_query(self) -> str:
        """The users whose id (as text) or email is ``:who``: what an operator types. Two at most: one is an answer."""
        return self.claims_from(f"{self.joined()} WHERE {self.key} = :who OR {self.email} = :who LIMIT 2")

    @property
    def one_query(self) -> str:
        """The user whose id as text is ``:key``, once found: read again under a lease an operator's command took."""
        return self.claims_from(f"{self.joined()} WHERE {self.key} = :key")
