"""A throwaway PostgreSQL cluster, built by the tests with PostgreSQL's own tools: initdb in a temporary directory,
pg_ctl on a free port of 127.0.0.1 with its socket in that directory, removed at stop().

The machine's own server (127.0.0.1:5432 on Debian) is never touched, so a test may restart its cluster and two
suites can run side by side. PostgreSQL refuses to run as root, so as root the cluster runs as the postgres user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.pgbouncer import free_port

# Settings for data nobody keeps: no fsync (a crash of the machine, not of the server, may lose the cluster).
SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
PORT_ATTEMPTS = 3  # another process may take the free port between the probe and the server's bind


def pg_bin(name: str) -> str:
    """A server tool of the newest PostgreSQL installed (Debian's postgresql package puts them here)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(Path(path).parts[-3]))
    if not found:
        raise RuntimeError(f"{name} is missing: `make test` installs PostgreSQL's server (apt-get install postgresql)")
    return found[-1]


def as_postgres(*argv: str) -> None:
    """Run a PostgreSQL tool, as the postgres user when we are root; its output in the error when it fails."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout}{result.stderr}")


class Cluster:
    """One PostgreSQL server (user postgres, trust authentication) in a temporary directory of its own."""

    def __init__(self) -> None:
        # Not under pytest's root-only temporary directory: the postgres user must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="email-sync-postgresql-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> Cluster:
        """initdb, then start on a free port; returns once the server accepts connections."""
        try:
            as_postgres(
                pg_bin("initdb"),
                *("-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"),
                "--no-sync",
            )
            attempts = PORT_ATTEMPTS
            while True:
                self.port = free_port()
                try:
                    self._pg_ctl("start", "-o", self._options())
                    return self
                except RuntimeError:
                    attempts -= 1
                    if not attempts or "could not bind" not in self.log.read_text():
                        raise
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """A fast restart, as an administrator's: clients are disconnected, the server comes back on its port."""
        self._pg_ctl("restart", "-m", "fast", "-o", self._options())

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _options(self) -> str:
        settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={self.directory}", *SETTINGS]
        return f"-p {self.port} " + " ".join(f"-c {setting}" for setting in settings)

    def _pg_ctl(self, *args: str) -> None:
        as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
