"""A real PgBouncer (Debian's package) in front of the test PostgreSQL, started by the tests on a free port.

PgBouncer refuses to run as root, so as root it runs as the postgres user. Its settings are its defaults but for
what a test must choose: where it listens, how it authenticates, the pool mode.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy import make_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PgBouncer:
    """``pool_mode`` transaction or session; ``passwords`` (role → password) switch authentication from trust to
    scram-sha-256, so a wrong password meets a real password check."""

    def __init__(self, server_url: str, pool_mode: str, passwords: dict[str, str] | None = None) -> None:
        # Not under pytest's root-only temporary directory: the postgres user must reach these files.
        self.directory = Path(tempfile.mkdtemp(prefix="email-sync-pgbouncer-"))
        self.server = make_url(server_url)
        self.pool_mode = pool_mode
        self.passwords = passwords
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        """A URL of ``database`` through this PgBouncer."""
        url = make_url(f"postgresql://127.0.0.1:{self.port}/{database}").set(username=user, password=password)
        return url.render_as_string(hide_password=False)

    def start(self) -> PgBouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(binary):
            raise RuntimeError("pgbouncer is missing: `make test` installs it (apt-get install pgbouncer)")
        users = self.passwords or {self.server.username or "postgres": ""}
        (self.directory / "users.txt").write_text("".join(f'"{user}" "{secret}"\n' for user, secret in users.items()))
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"auth_type = {'scram-sha-256' if self.passwords else 'trust'}\n"
            f"auth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
        )
        prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            for path in self.directory.iterdir():
                shutil.chown(path, "postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        log = self.directory / "pgbouncer.log"
        with log.open("wb") as output:
            self.process = subprocess.Popen([*prefix, binary, str(ini)], stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{self.port} within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
