"""Leases on users, and what became of them: the only SQL that writes our state table during a cycle.

A run claims due users in batches by taking a lease on each (``lease_owner`` = the run id, ``lease_until`` on the
database clock). Two runs, on one host or many, never hold the same user: PostgreSQL skips rows another claimer has
locked, and the guarded upsert refuses a live lease. Every result is written ``WHERE lease_owner = :owner``, so a run
whose lease expired (and was taken over) cannot record anything. A crashed run's leases simply expire.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, bindparam, text

from emailsync.config.settings import SyncConfig, UsersConfig
from emailsync.errors import UsageError
from emailsync.model import Candidate, Claim, Result, json_id
from emailsync.redaction import redact_and_truncate
from emailsync.store import state
from emailsync.store.db import MAX_ERROR_CHARS, STATE, dialect_of, with_retry
from emailsync.store.users import UsersTable

PAGE = 1000  # due users read per look at the app's table; each is claimed later, in small batches, by its id


class Leases:
    """Claims users for one run and records what happened to them."""

    def __init__(self, engine: Engine, users: UsersConfig, sync: SyncConfig, run_id: str) -> None:
        self.engine = engine
        self.sync = sync
        self.owner = run_id
        self.d = dialect_of(engine)
        self.users = UsersTable(users, self.d)

    def count_due(self) -> int:
        count = with_retry(
            self.engine,
            lambda connection: connection.execute(
                text(f"SELECT count(*) {self.users.due_from()}"), {"interval": self.sync.interval}
            ).scalar(),
        )
        return int(count or 0)

    def next_page(self, limit: int) -> list[Candidate]:
        """Up to ``limit`` due users: one look at the whole due set per page rather than per claim."""
        rows = with_retry(
            self.engine,
            lambda connection: connection.execute(self._page, {"interval": self.sync.interval, "limit": limit}).all(),
        )
        return [Candidate(json_id(row.id), row.key) for row in rows]

    # The statements of a cycle's every batch are built once per run: SQLAlchemy then compiles each once, rather
    # than parsing and compiling a fresh text() per claim and per write, which the main thread, the one that holds the
    # database, would pay at every batch (docs/speed.md).

    @cached_property
    def _page(self) -> TextClause:
        return text(self.users.page_query)

    @cached_property
    def _lists(self) -> tuple[Any, ...]:
        return bindparam("ids", expanding=True), bindparam("keys", expanding=True)

    def claim(self, candidates: Sequence[Candidate]) -> list[Claim]:
        """Lease those of these users who are still due: a user another run took meanwhile is skipped. A retry
        after a dropped connection is safe: the failed transaction took no lease."""
        return with_retry(self.engine, lambda connection: self._claim(connection, candidates)) if candidates else []

    def _claim(self, connection: Connection, candidates: Sequence[Candidate]) -> list[Claim]:
        params = {
            "interval": self.sync.interval,
            "ids": [c.user_id for c in candidates],
            "keys": [c.key for c in candidates],
            "owner": self.owner,
            "lease": self.sync.lease,
        }
        if self.d.postgres:
            rows = connection.execute(self._claim_and_lease, params).all()
        else:
            # SQLite: the transaction began with BEGIN IMMEDIATE, so nobody else writes until we commit.
            rows = connection.execute(self._still_due, params).all()
            if rows:
                connection.execute(
                    self._take_lease, [{"key": row.key, "owner": self.owner, "lease": self.sync.lease} for row in rows]
                )
        return [_claim_of(row) for row in rows]

    @cached_property
    def _claim_and_lease(self) -> TextClause:
        """PostgreSQL's claim, one statement: lock the due rows (skipping those another claimer holds), then take the
        lease only where no live lease exists; the upsert's WHERE is what makes a double claim impossible."""
        leases = f"SELECT key, :owner, {self.d.shifted(':lease')}, 0, now() FROM due"
        return text(f"""
            WITH due AS ({self.users.claim_query} FOR UPDATE OF u SKIP LOCKED),
            claimed AS ({self._lease(leases, respect_backoff=True)} RETURNING user_id)
            SELECT due.id, due.email, due.key, due.failures, due.last_sync, due.results
            FROM due JOIN claimed ON claimed.user_id = due.key""").bindparams(*self._lists)

    @cached_property
    def _still_due(self) -> TextClause:
        return text(self.users.claim_query).bindparams(*self._lists)

    @cached_property
    def _take_lease(self) -> TextClause:
        return text(self._lease(self._one_lease, respect_backoff=True))

    @property
    def _one_lease(self) -> str:
        return f"VALUES (:key, :owner, {self.d.shifted(':lease')}, 0, {self.d.now})"

    def _lease(self, rows: str, respect_backoff: bool) -> str:
        """The guarded upsert that takes a lease on ``rows`` (key, owner, until, 0, now): never over a live lease
        of another run, and, unless an operator asked for this user, never over a backoff."""
        backoff = f"AND NOT {state.in_backoff(self.d, 's')}" if respect_backoff else ""
        return f"""
            INSERT INTO {STATE} AS s (user_id, lease_owner, lease_until, failures, updated_at)
            {rows}
            ON CONFLICT (user_id) DO UPDATE
               SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until,
                   updated_at = excluded.updated_at
             WHERE NOT {state.live_lease(self.d, "s")} {backoff}"""

    def find(self, who: str) -> Claim | None:
        """The user whose id (as text) or email is ``who``: what an operator types."""
        rows = with_retry(
            self.engine, lambda connection: connection.execute(text(self.users.find_query), {"who": who}).all()
        )
        return _claim_of(rows[0]) if len(rows) == 1 else None

    def claim_user(self, key: str) -> Claim | None:
        """Lease one user whatever its interval and backoff, unless a live run holds it (None), and read it under
        that lease, in the same transaction: what runs recorded until then counts (its Idempotency-Key, its backoff),
        and no run changes it while the lease holds."""
        return with_retry(self.engine, lambda connection: self._claim_user(connection, key))

    def _claim_user(self, connection: Connection, key: str) -> Claim | None:
        leased = connection.execute(
            text(f"{self._lease(self._one_lease, respect_backoff=False)} RETURNING user_id"),
            {"key": key, "owner": self.owner, "lease": self.sync.lease},
        ).all()
        if not leased:
            return None
        row = connection.execute(text(self.users.one_query), {"key": key}).one_or_none()
        if row is None:  # gone from the app's table since it was found: raised, so the lease is rolled back
            raise UsageError(f"user {key} is no longer in {self.users.config.table}")
        return _claim_of(row)

    def reset(self, keys: Sequence[str] | None) -> int:
        """Clear the backoff of these users (None: of every failing user), and their quarantine, so the next cycle
        retries them. A park by an operator stays: only `unpark` ends it."""
        where = state.failing("") if keys is None else "user_id = :key"
        params: list[dict[str, str]] = [{}] if keys is None else [{"key": key} for key in keys]
        quarantined = f"parked_by = '{state.QUARANTINE}'"
        return with_retry(
            self.engine,
            lambda connection: sum(
                connection.execute(
                    text(
                        f"""UPDATE {STATE} SET {state.CLEAN_SLATE},
                                parked_at = CASE WHEN {quarantined} THEN NULL ELSE parked_at END,
                                parked_reason = CASE WHEN {quarantined} THEN NULL ELSE parked_reason END,
                                parked_by = CASE WHEN {quarantined} THEN NULL ELSE parked_by END,
                                updated_at = {self.d.now}
                            WHERE {where}"""
                    ),
                    one,
                ).rowcount
                for one in params
            ),
        )

    def record(self, results: Sequence[Result]) -> list[Result]:
        """Write a batch of results in one transaction, retried on a fresh connection while the database is away.
        Returns the users this batch quarantined."""
        if not results:
            return []
        return with_retry(self.engine, lambda connection: self._record(connection, results))

    def _record(self, connection: Connection, results: Sequence[Result]) -> list[Result]:
        """Three statements at most, whatever the batch's size: last_sync of the synced users whose lease we still
        hold, then their state, then the failed users' state. Only the synced users' ids and keys grow the
        parameters: two per user, within SQLite's limit at sync.batch_size's maximum.

        A failure that is permanent (Result.permanent) counts towards quarantine, any other outcome starts the
        count again; the failure that reaches sync.quarantine_after parks the user, unless an operator parked it
        meanwhile."""
        synced = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        if synced:
            connection.execute(
                self._stamp_last_sync,
                {"ids": [r.claim.user_id for r in synced], "keys": [r.claim.key for r in synced], "owner": self.owner},
            )
            self._end_leases(connection, self._end_synced, [(r.claim.key, r.duration_ms) for r in synced])
        if not failed:
            return []
        rows = self._end_leases(
            connection,
            self._end_failed,
            [
                (
                    r.claim.key,
                    r.duration_ms,
                    failure_backoff(self.sync, r.claim.failures),
                    redact_and_truncate(r.error or "failed", MAX_ERROR_CHARS),
                    int(r.permanent),
                )
                for r in failed
            ],
        )
        newly = {
            row.user_id
            for row in rows
            if row.parked_by == state.QUARANTINE and row.permanent_failures == self.sync.quarantine_after
        }
        return [r for r in failed if r.claim.key in newly]

    def _end_leases(self, connection: Connection, statement: TextClause, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run one of the _ending statements on a batch: its rows as one JSON parameter."""
        result = connection.execute(statement, {"batch": json.dumps(rows), "owner": self.owner})
        return list(result) if result.returns_rows else []

    @cached_property
    def _stamp_last_sync(self) -> TextClause:
        """last_sync of the synced users whose lease we still hold: the app's row first, as a claim locks it."""
        still_held = f"SELECT user_id FROM {STATE} WHERE user_id IN :keys AND lease_owner = :owner"
        return text(f"""UPDATE {self.users.table} AS u SET {self.users.last_sync_target} = {self.d.now}
                         WHERE {self.users.id} IN :ids AND {self.d.among(self.users.key, still_held)}""").bindparams(
            *self._lists
        )

    @cached_property
    def _end_synced(self) -> TextClause:
        return self._ending(
            [("ms", "integer")],
            f"""failures = 0, permanent_failures = 0, next_attempt_at = NULL, last_error = NULL,
                last_success_at = {self.d.now}, last_duration_ms = batch.ms, results = results + 1""",
        )

    @cached_property
    def _end_failed(self) -> TextClause:
        d, after = self.d, self.sync.quarantine_after
        quarantine = (
            f"batch.permanent = 1 AND {after} > 0 AND permanent_failures + 1 >= {after} AND NOT {state.parked('')}"
        )
        return self._ending(
            [("ms", "integer"), ("delay", "double precision"), ("error", "text"), ("permanent", "integer")],
            f"""failures = failures + 1, next_attempt_at = {d.shifted("batch.delay")}, last_error = batch.error,
                last_duration_ms = batch.ms, results = results + 1,
                permanent_failures = CASE WHEN batch.permanent = 1 THEN permanent_failures + 1 ELSE 0 END,
                parked_by = CASE WHEN {quarantine} THEN '{state.QUARANTINE}' ELSE parked_by END,
                parked_reason = CASE WHEN {quarantine} THEN batch.error ELSE parked_reason END,
                parked_at = CASE WHEN {quarantine} THEN {d.now} ELSE parked_at END""",
            returning="user_id, parked_by, permanent_failures",
        )

    def _ending(self, columns: Sequence[tuple[str, str]], sets: str, returning: str = "") -> TextClause:
        """End the leases we still hold on a batch's users (rows of ``:batch`` start with the key), setting ``sets``
        from the batch's other ``columns`` (name, type); the ``returning`` columns of the rows written. The batch
        travels as one JSON parameter, so the statement is the same whatever the batch's size (Debian's SQLite
        takes 250,000 parameters at most; a JSON text has no such limit). In ``sets``, a bare column is the row's
        value before."""
        return text(f"""WITH batch AS ({self.d.json_rows("batch", [("key", "text"), *columns])})
                     UPDATE {STATE} SET lease_owner = NULL, lease_until = NULL, updated_at = {self.d.now}, {sets}
                     FROM batch WHERE {STATE}.user_id = batch.key AND {STATE}.lease_owner = :owner
                     {f"RETURNING {returning}" if returning else ""}""")

    def release(self, claims: Sequence[Claim]) -> None:
        """Give back leases of users we did not call, so the next run can take them at once."""
        if claims:
            with_retry(
                self.engine,
                lambda connection: connection.execute(
                    self._release, {"keys": [c.key for c in claims], "owner": self.owner}
                ),
            )

    @cached_property
    def _release(self) -> TextClause:
        return text(
            f"UPDATE {STATE} SET lease_owner = NULL, lease_until = NULL WHERE user_id IN :keys AND lease_owner = :owner"
        ).bindparams(bindparam("keys", expanding=True))


@dataclass
class DuePages:
    """Claims due users page by page: one look at the whole due set per page, then claims by id, which the primary
    key serves, so a missing app index costs a scan per page rather than per claim.

    A page is only a list of candidates. Each page is shuffled, so runs on several hosts reading the same page
    do not all try the same users first; oldest first still holds from page to page. The run is done when a page
    comes back empty, or when a whole page yielded nobody (other runs took or locked them all).
    """

    leases: Leases
    size: int  # at most max_users_per_run: a run that may take only a few takes the oldest
    page: list[Candidate] = field(default_factory=list)
    page_yielded: bool = True  # whether the current page gave us anyone (True before the first page)
    done: bool = False

    def claim(self, limit: int) -> list[Claim]:
        while not self.done and limit > 0:
            if not self.page:
                self._turn_page()
                continue
            candidates, self.page = self.page[:limit], self.page[limit:]
            claims = self.leases.claim(candidates)
            if claims:
                self.page_yielded = True
                return claims
        return []

    def _turn_page(self) -> None:
        self.page = self.leases.next_page(self.size) if self.page_yielded else []
        random.shuffle(self.page)
        self.page_yielded = False
        self.done = not self.page


def failure_backoff(sync: SyncConfig, failures: int) -> float:
    """Seconds until the next attempt of a user that has failed ``failures`` times in a row before this failure:
    doubling each time, capped, with jitter so failed users do not all come back in the same cycle."""
    ceiling = min(sync.failure_backoff_max, sync.failure_backoff * 2.0 ** min(failures, 32))
    return ceiling * random.uniform(0.5, 1.0)


def _claim_of(row: Any) -> Claim:
    last_sync = "" if row.last_sync is None else str(row.last_sync)
    return Claim(json_id(row.id), row.key, row.email, row.failures, last_sync, row.results)
