"""The database: connecting, transactions that say what a failure means, and the SQL that differs by dialect.

email-sync keeps its state in its own tables (``email_sync_*``) beside the app's users table, and writes nothing to
the app's tables but the last-sync column. PostgreSQL is primary; SQLite is the embedded single-host variant. The
few places where their SQL differs go through ``Dialect``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from emailsync.config import database_url
from emailsync.config.settings import DatabaseConfig
from emailsync.config.values import Invalid
from emailsync.errors import ConfigError, DatabaseUnavailable
from emailsync.store.db_failures import classify

STATE = "email_sync_user_state"
RUNS = "email_sync_runs"
VERSION_TABLE = "email_sync_schema"
BUDGET = "email_sync_budget"
FLEET = "email_sync_fleet"
MAX_ERROR_CHARS = 500  # of an error stored in our tables: enough to act on, never a whole answer body
URL_FROM = "email_sync_url_from"  # an execution option: where the URL came from, for errors that name it

T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between PostgreSQL and SQLite: clocks, timestamps and row locking."""

    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    @property
    def timestamp(self) -> str:
        return "timestamptz" if self.postgres else "text"

    @property
    def now(self) -> str:
        """The database's clock, which decides for every host: skewed host clocks do not matter."""
        return "now()" if self.postgres else "strftime('%Y-%m-%d %H:%M:%f', 'now')"

    @property
    def epoch(self) -> str:
        """The database's clock as Unix seconds, fractions included: what the fleet budget counts in."""
        return "extract(epoch FROM now())" if self.postgres else "((julianday('now') - 2440587.5) * 86400.0)"

    def greatest(self, *values: str) -> str:
        return f"{'greatest' if self.postgres else 'max'}({', '.join(values)})"

    def shifted(self, seconds: str) -> str:
        """now() moved by ``seconds``, an SQL expression (a parameter or a column; negative for the past)."""
        if self.postgres:
            return f"(now() + make_interval(secs => {seconds}))"
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {seconds}))"

    def older_than(self, column: str, seconds_param: str) -> str:
        """``column`` is NULL or older than now() minus a parameter, for a column in the app's own format."""
        if self.postgres:
            return f"({column} IS NULL OR {column} < now() - make_interval(secs => :{seconds_param}))"
        # The app's SQLite column may hold any ISO 8601 form; julianday() reads them all.
        return (
            f"({column} IS NULL OR julianday({column}) < julianday('now', printf('-%.3f seconds', :{seconds_param})))"
        )

    def instant(self, column: str) -> str:
        """A timestamp column in one spelling whatever the session's time zone and DateStyle (a pooler's connections
        may each have their own): Unix seconds on PostgreSQL (a naive timestamp's as if it were UTC; infinity as
        such, where the driver could not read it as a datetime), the stored text itself on SQLite."""
        return f"extract(epoch FROM {column})" if self.postgres else column

    def age(self, column: str) -> str:
        """Seconds from ``column`` to now, by the database clock."""
        if self.postgres:
            return f"extract(epoch FROM now() - {column})"
        return f"((julianday('now') - julianday({column})) * 86400.0)"

    def among(self, value: str, subquery: str) -> str:
        """``value`` IN an uncorrelated subquery that runs once. PostgreSQL would plan ``IN (subquery)`` as a join,
        and while our state table's statistics lag behind its growth (a first run) it chose a nested loop that
        scanned the users table once per row of a batch. ARRAY(...) keeps it a one-off (docs/speed.md)."""
        if self.postgres:
            return f"{value} = ANY(ARRAY({subquery}))"
        return f"{value} IN ({subquery})"

    def json_rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        """A SELECT of the rows of ``:param``, a JSON array of arrays, as ``columns`` (name, PostgreSQL type): a
        batch of any size in one parameter and one statement text, which SQLAlchemy then compiles only once."""
        if self.postgres:
            cells = ", ".join(f"CAST(r ->> {i} AS {kind}) AS {name}" for i, (name, kind) in enumerate(columns))
            return f"SELECT {cells} FROM json_array_elements(CAST(:{param} AS json)) AS r"
        cells = ", ".join(f"json_extract(value, '$[{i}]') AS {name}" for i, (name, _) in enumerate(columns))
        return f"SELECT {cells} FROM json_each(:{param})"

    def quote(self, name: str) -> str:
        """A configured table or column name (already validated as [schema.]identifier), quoted."""
        return ".".join(f'"{part}"' for part in name.split("."))


def driver_url(url: str) -> str:
    """The URL as SQLAlchemy reads it, our driver spelled out (for a tool that makes its own engine)."""
    return database_url.sqlalchemy_url(url).render_as_string(hide_password=False)


def connect(config: DatabaseConfig) -> Engine:
    """An engine that never waits forever on a statement.

    No pool pre-ping: a run is one short process, and with_retry already retries a transaction whose connection
    turns out to be dead; a ping would cost a round trip before every transaction.
    """
    try:
        url = database_url.sqlalchemy_url(config.url)
    except Invalid as error:
        raise ConfigError(f"{config.url_from}: {error}; the URL is not shown") from None
    options = {URL_FROM: config.url_from}
    if url.drivername.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_size=2,
            max_overflow=2,
            executemany_mode="values_plus_batch",
            # Nothing in the startup packet but what every pooler passes on: PgBouncer refuses `options`.
            connect_args={
                "connect_timeout": max(1, math.ceil(config.connect_timeout)),
                "application_name": "email-sync",
            },
            execution_options=options,
        )
        _settings_in_every_transaction(engine, config)
        return engine
    engine = create_engine(url, connect_args={"timeout": config.statement_timeout}, execution_options=options)

    # pysqlite opens transactions lazily and only for writes; a claim must read and write in one write
    # transaction, so take the write lock at BEGIN.
    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _settings_in_every_transaction(engine: Engine, config: DatabaseConfig) -> None:
    """Timeouts and the time zone, set for each transaction rather than the session: a transaction pooler
    (PgBouncer) hands every transaction a server connection of its own, whose session settings are someone
    else's. The time zone decides how a naive last_sync column is read and written; timestamptz needs none."""
    settings = {"timeout": str(int(config.statement_timeout * 1000)), "zone": config.timezone}

    @event.listens_for(engine, "begin")
    def _set_local(connection: Connection) -> None:
        connection.exec_driver_sql(
            "SELECT set_config('statement_timeout', %(timeout)s, true), set_config('lock_timeout', %(timeout)s, true),"
            " set_config('TimeZone', %(zone)s, true)",
            settings,
        )


@contextmanager
def connected(config: DatabaseConfig) -> Iterator[Engine]:
    """An engine for one command, its connections closed when the command is done."""
    engine = connect(config)
    try:
        yield engine
    finally:
        engine.dispose()


def dialect_of(bind: Engine | Connection) -> Dialect:
    return Dialect(bind.dialect.name)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction whose database failures become the error they mean: ConfigError (exit 78) for what the
    operator must fix, DatabaseUnavailable (75) for what the next tick may not meet. See db_failures."""
    try:
        with engine.begin() as connection:
            yield connection
    except DBAPIError as error:
        failure = classify(error, engine.get_execution_options().get(URL_FROM, "database.url"))
        if failure is None:
            raise
        raise failure from None


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A transaction whose statements all read the database as of its start, so what a report adds up agrees
    although runs write meanwhile: REPEATABLE READ on PostgreSQL, whose default lets each statement see the commits
    before it (the isolation level travels in BEGIN, so a transaction pooler keeps it); SQLite's transaction is one
    snapshot already."""
    isolated = engine.execution_options(isolation_level="REPEATABLE READ") if dialect_of(engine).postgres else engine
    with transaction(isolated) as connection:
        yield connection


RETRY_DELAYS = (0.0, 0.5, 1.5, 3.0)  # seconds before each try: rides out a dropped connection or a quick restart


def with_retry(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in a transaction, again on a fresh connection (after a pause) while the database is away.

    Safe for every caller: a failed transaction changed nothing; result writes are guarded by the lease, so
    repeating one whose commit landed unseen changes nothing; a claim whose commit landed unseen leaves leases
    that simply expire. About 5 s in all, well inside the watchdog.
    """
    for delay in RETRY_DELAYS[:-1]:
        if delay:
            time.sleep(delay)
        try:
            with transaction(engine) as connection:
                return work(connection)
        except DatabaseUnavailable:
            continue
    time.sleep(RETRY_DELAYS[-1])
    with transaction(engine) as connection:
        return work(connection)
