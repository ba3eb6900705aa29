"""email-sync's own tables as ordered migration steps, and what a run needs of the app's schema.

Each step takes the schema from the version before it to its own; `migrate` (and, with database.migrate = "auto",
every run before it claims anyone) applies the steps a database lacks, in one transaction under one lock, so a host
upgrading from any earlier version ends where a fresh install starts. A new version is a new step at the end: never
an edit of an old one, which databases out there have already run.

A host whose release is older than the database's schema stands aside (emailsync/sync/cycle.py), and a run that began
before another host migrated finishes on a schema it does not know: so a step only adds (tables, nullable or
defaulted columns, indexes) and never drops, renames or changes the meaning of what an earlier release reads or
writes (docs/operations.md, "Upgrades").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from emailsync.config.settings import UsersConfig
from emailsync.errors import ConfigError, SchemaError
from emailsync.store.db import BUDGET, FLEET, RUNS, STATE, URL_FROM, VERSION_TABLE, Dialect, dialect_of, transaction
from emailsync.store.db_failures import describe, on_standby

INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a role that may not create or alter a table


@dataclass(frozen=True)
class Step:
    version: int
    statements: Callable[[Dialect], list[str]]


def _v1_state_and_runs(d: Dialect) -> list[str]:
    """Leases, backoff and the last error per user; one row per run."""
    ts = d.timestamp
    return [
        f"""CREATE TABLE IF NOT EXISTS {STATE} (
            user_id text PRIMARY KEY,
            lease_owner text,
            lease_until {ts},
            failures integer NOT NULL DEFAULT 0,
            next_attempt_at {ts},
            last_error text,
            last_success_at {ts},
            last_duration_ms integer,
            updated_at {ts}
        )""",
        f"CREATE INDEX IF NOT EXISTS {STATE}_leased ON {STATE} (lease_until) WHERE lease_owner IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {STATE}_failing ON {STATE} (next_attempt_at) WHERE failures > 0",
        f"""CREATE TABLE IF NOT EXISTS {RUNS} (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at {ts} NOT NULL,
            finished_at {ts},
            due integer,
            synced integer NOT NULL DEFAULT 0,
            failed integer NOT NULL DEFAULT 0,
            skipped integer NOT NULL DEFAULT 0,
            outcome text NOT NULL,
            error text
        )""",
        f"CREATE INDEX IF NOT EXISTS {RUNS}_started ON {RUNS} (started_at)",
    ]


def _fleet_budget(d: Dialect) -> list[str]:
    """The fleet's call budget and shared cooldown (emailsync.sync.budget): one row, Unix seconds on the database
    clock; created empty, its row written by the first run with backend.max_rate set."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {BUDGET} (
            name text PRIMARY KEY,
            next_slot double precision NOT NULL,
            cooldown_until double precision NOT NULL,
            cooldown_by text
        )"""
    ]


def _fleet_control(d: Dialect) -> list[str]:
    """Parked users (by an operator, or quarantined after permanent failures in a row) and the fleet's mode
    (running, paused, draining): one row every run reads (emailsync.store.control)."""
    ts = d.timestamp
    return [
        f"ALTER TABLE {STATE} ADD COLUMN parked_at {ts}",
        f"ALTER TABLE {STATE} ADD COLUMN parked_by text",
        f"ALTER TABLE {STATE} ADD COLUMN parked_reason text",
        f"ALTER TABLE {STATE} ADD COLUMN permanent_failures integer NOT NULL DEFAULT 0",
        f"CREATE INDEX IF NOT EXISTS {STATE}_parked ON {STATE} (parked_at) WHERE parked_at IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS {FLEET} (
            name text PRIMARY KEY,
            mode text NOT NULL,
            changed_at {ts} NOT NULL,
            changed_by text NOT NULL,
            reason text
        )""",
    ]


def _results_recorded(d: Dialect) -> list[str]:
    """The results ever recorded for each user: with last_sync and failures, what makes each attempt's
    Idempotency-Key its own (emailsync.sync.backend.idempotency_key). It only grows, where failures goes back to 0."""
    return [f"ALTER TABLE {STATE} ADD COLUMN results integer NOT NULL DEFAULT 0"]


def _run_release(d: Dialect) -> list[str]:
    """The release of email-sync each run was, so `status` can say which hosts await an upgrade."""
    return [f"ALTER TABLE {RUNS} ADD COLUMN release text"]


STEPS: tuple[Step, ...] = (
    Step(1, _v1_state_and_runs),
    Step(2, _fleet_budget),
    Step(3, _fleet_control),
    Step(4, _results_recorded),
    Step(5, _run_release),
)
SCHEMA_VERSION = STEPS[-1].version


def schema_version(connection: Connection) -> int | None:
    """Our schema's version, or None when our tables do not exist."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    version = connection.execute(text(f"SELECT max(version) FROM {VERSION_TABLE}")).scalar()
    return int(version) if version is not None else None


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> tuple[int | None, int]:
    """Apply the steps the database lacks, up to ``target`` (only tests stop short of the latest); safe to run
    again and from several hosts at once: the first takes the lock and migrates, the others wait for it, then find
    nothing left to do. Returns the versions before and after; a schema newer than this release is refused."""
    before, after = _apply_missing_steps(engine, target)
    if before is not None and before > SCHEMA_VERSION:
        raise SchemaError(_newer_schema(before))
    return before, after


def _apply_missing_steps(engine: Engine, target: int) -> tuple[int | None, int]:
    """migrate's work, which leaves a schema newer than this release as it is (before and after: its version)."""
    d = dialect_of(engine)
    with transaction(engine) as connection:
        if d.postgres:
            # Two hosts migrating at once must not both apply a step. Transaction-scoped: fine behind PgBouncer.
            # (SQLite's BEGIN IMMEDIATE, see db.connect, already lets one writer in at a time.)
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('email-sync migrate'))"))
        before = schema_version(connection)
        if before is not None and before > SCHEMA_VERSION:
            return before, before
        try:
            if before is None:
                columns = f"version integer NOT NULL, applied_at {d.timestamp}"
                connection.execute(text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ({columns})"))
            for step in STEPS:
                if (before or 0) < step.version <= target:
                    for statement in step.statements(d):
                        connection.execute(text(statement))
                    connection.execute(
                        text(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (:v, {d.now})"),
                        {"v": step.version},
                    )
        except ProgrammingError as error:
            if getattr(error.orig, "pgcode", None) != INSUFFICIENT_PRIVILEGE:
                raise
            url_from = engine.get_execution_options().get(URL_FROM, "database.url")
            raise SchemaError(
                f"{url_from}: its role may not change email-sync's schema (v{before or 0} to v{target}): "
                f"{describe(error)}; run `email-sync migrate` once as a role that may, the owner of email-sync's "
                "tables: EMAIL_SYNC_DATABASE_URL_FILE=<a file holding its URL> email-sync migrate "
                "(or EMAIL_SYNC_DATABASE_URL=<its URL>)"
            ) from None
    return before, max(before or 0, target)


@dataclass(frozen=True)
class Readiness:
    """What a run found of our schema: the version before it migrated (None: no tables), and the one it works on."""

    found: int | None
    version: int

    @property
    def migrated(self) -> bool:
        return self.found != self.version

    @property
    def newer(self) -> bool:
        """The database is ahead of this release: the run stands aside (emailsync/sync/cycle.py)."""
        return self.version > SCHEMA_VERSION


def ready_for_run(engine: Engine, users: UsersConfig, mode: str) -> Readiness:
    """A run's preflight (see check_ready), with what a run does about the schema's version: behind, it applies
    the missing steps under migrate's lock (``mode`` "auto", database.migrate) or refuses (78, "manual"); ahead, it
    says so, and the run stands aside."""
    found = _preflight(engine, users)
    if found is not None and found >= SCHEMA_VERSION:
        return Readiness(found, found)
    if mode != "auto":
        raise SchemaError(_behind(found))
    # Another host may have migrated while this one waited for the lock, even past this release.
    before, version = _apply_missing_steps(engine, SCHEMA_VERSION)
    return Readiness(before, version)


def check_for_run(engine: Engine, users: UsersConfig, mode: str) -> int | None:
    """`check`'s view of what the next run finds, changing nothing: the schema's version (None: no tables yet). A
    schema behind this release is fine under ``mode`` "auto" (database.migrate), whose next run applies the missing
    steps itself; under "manual" it is check_ready's 78 naming `email-sync migrate`."""
    if mode != "auto":
        return check_ready(engine, users)
    version = _preflight(engine, users)
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaError(_newer_schema(version))
    return version


def _behind(version: int | None) -> str:
    if version is None:
        return "email-sync's tables do not exist in this database: run `email-sync migrate`"
    return f"email-sync schema v{version} is older than v{SCHEMA_VERSION}: run `email-sync migrate`"


def _newer_schema(version: int) -> str:
    return f"the database has email-sync schema v{version}, newer than this email-sync (v{SCHEMA_VERSION}): upgrade"


def app_index_ddl(dialect: Dialect, users: UsersConfig) -> str:
    """The index that lets a run find due users without scanning the app's table. email-sync never creates it
    itself: the app's schema is the app's."""
    table = users.table.rpartition(".")[2]
    name = dialect.quote(f"{table}_{users.last_sync_column}_email_sync_idx")
    on = f"{dialect.quote(users.table)} ({dialect.quote(users.last_sync_column)}"
    if dialect.postgres:
        return f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {on} ASC NULLS FIRST);"
    return f"CREATE INDEX IF NOT EXISTS {name} ON {on});"


def has_app_index(engine: Engine, users: UsersConfig) -> bool:
    """Whether an index of the app's table leads with its last-sync column: app_index_ddl's, or one of the app's."""
    schema, _, table = users.table.rpartition(".")
    indexes = inspect(engine).get_indexes(table, schema=schema or None)
    return any(index["column_names"][:1] == [users.last_sync_column] for index in indexes)


def check_ready(engine: Engine, users: UsersConfig, *, writing: bool = True, newer: bool = False) -> int:
    """Preflight of the commands that need our schema as this release knows it: reachable, our schema current (or,
    with ``newer``, ahead of this release: `status` reads it, since steps only add), the app's table and columns
    where configured, and writable unless the command only reads (`status` and `users` answer on a standby too).
    Every command checks this before its queries, so a database never migrated is exit 78 naming `email-sync
    migrate`, never a failed query. Returns the schema's version."""
    version = _preflight(engine, users, writing=writing)
    if version is None or version < SCHEMA_VERSION:
        raise SchemaError(_behind(version))
    if version > SCHEMA_VERSION and not newer:
        raise SchemaError(_newer_schema(version))
    return version


def _preflight(engine: Engine, users: UsersConfig, *, writing: bool = True) -> int | None:
    """Reachable, writable (unless ``writing`` is False), the app's table and columns where configured; our
    schema's version, whatever it is."""
    d = dialect_of(engine)
    with transaction(engine) as connection:
        version = schema_version(connection)
        if writing and d.postgres:
            _check_writable(connection, engine.get_execution_options().get(URL_FROM, "database.url"))
        _check_users_table(connection, d, users)
        if users.filter:
            refused = _refused(connection, f"SELECT 1 FROM {d.quote(users.table)} AS u WHERE ({users.filter}) LIMIT 0")
            if refused is not None:
                raise ConfigError(f"users.filter is not a valid condition on {users.table}: {describe(refused)}")
    return version


def _check_writable(connection: Connection, url_from: str) -> None:
    """A hot standby may be a failover under way (75, db_failures); a primary set read-only is configuration."""
    standby, read_only = connection.execute(
        text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
    ).one()
    if standby:
        raise on_standby(url_from)
    if read_only == "on":
        raise ConfigError(f"{url_from}: the database is read-only (default_transaction_read_only): it must be writable")


def _check_users_table(connection: Connection, d: Dialect, users: UsersConfig) -> None:
    """The app's table and the three columns a run reads and writes. One query naming them all is the usual case;
    only when the database refuses it does the inspector find which one is missing, so the error names its key
    (the inspector's reflection query was the costliest part of a run that finds nobody due)."""
    keys = ("id_column", "email_column", "last_sync_column")
    # Qualified: SQLite takes an unknown "name" alone for a string, but not u."name".
    columns = ", ".join(f"u.{d.quote(getattr(users, key))}" for key in keys)
    refused = _refused(connection, f"SELECT {columns} FROM {d.quote(users.table)} AS u LIMIT 0")
    if refused is None:
        return
    schema, _, table = users.table.rpartition(".")
    inspector = inspect(connection)
    if not inspector.has_table(table, schema=schema or None):
        raise SchemaError(f"users.table: table {users.table} does not exist in the database")
    found = {column["name"] for column in inspector.get_columns(table, schema=schema or None)}
    for key in keys:
        column = getattr(users, key)
        if column not in found:
            raise SchemaError(f"users.{key}: column {column} does not exist in table {users.table}")
    raise refused  # everything is there, and still refused (a privilege?): the database's own words


def _refused(connection: Connection, probe: str) -> DBAPIError | None:
    """The database's error for a statement it refuses, run in a savepoint so the transaction goes on; a lost
    connection is raised, not returned."""
    try:
        with connection.begin_nested():
            connection.execute(text(probe))
    except (OperationalError, DBAPIError) as error:
        if isinstance(error, OperationalError) and error.connection_invalidated:
            raise
        return error
    return None
