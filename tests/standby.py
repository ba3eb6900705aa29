"""A real primary and its streaming hot standby, built by the tests with PostgreSQL's own tools: initdb, pg_ctl,
pg_basebackup -R (asynchronous streaming replication, as most HA set-ups start), pg_ctl promote.

Each server listens on a free port on 127.0.0.1 with its socket in its own directory: the machine's cluster on
5432 is never touched. PostgreSQL refuses to run as root, so as root the servers run as the postgres user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.pgbouncer import free_port
from tests.postgres import as_postgres, pg_bin


class Server:
    """One PostgreSQL server: its data directory and port."""

    def __init__(self, directory: Path, name: str) -> None:
        self.data = directory / name
        self.socket_dir = directory
        self.log = directory / f"{name}.log"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.socket_dir}"
        as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``mode`` immediate: the server dies as in a crash (no checkpoint, no goodbye to its clients)."""
        if (self.data / "postmaster.pid").exists():
            as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """A standby becomes a primary; returns once it accepts writes."""
        as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "promote")

    def scalar(self, sql: str, database: str = "postgres") -> object:
        """One statement in autocommit (CREATE DATABASE included); its first value, if it returns rows."""
        engine = create_engine(
            self.url(database),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            with engine.connect() as connection:
                result = connection.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()


class Replicated:
    """A primary and a hot standby that streams from it, in a temporary directory removed at stop()."""

    def __init__(self) -> None:
        # Not under pytest's root-only temporary directory: the postgres user must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="email-sync-standby-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self.primary = Server(self.directory, "primary")
        self.standby = Server(self.directory, "standby")

    def start(self) -> Replicated:
        try:
            as_postgres(pg_bin("initdb"), "-D", str(self.primary.data), "-U", "postgres", "--auth=trust", "--no-sync")
            self.primary.start()
            as_postgres(
                pg_bin("pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
                *("-D", str(self.standby.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
            )
            self.standby.start()
        except BaseException:
            self.stop()
            raise
        return self

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        target = self.primary.scalar("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.standby.scalar(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the standby did not replay up to {target} within {timeout} s")

    def stop(self) -> None:
        try:
            for server in (self.standby, self.primary):
                server.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Replicated:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
