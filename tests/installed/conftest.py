"""Fixtures of the installed-package suite: per Debian release, a booted container of that release into which
email-sync is installed from a signed apt repository exactly as README.md's install section says.

Run by `make deb-test` (packaging/deb-test.sh), which first builds what this needs: the release's packages
(dist/<release>/), its upgrade fixture (dist/fixtures/<release>/, the same tree as 0.0.9-1+deb<N>) and a plain
bootable rootfs ($EMAIL_SYNC_BUILD_CACHE/boot-<release>). Anything missing is a failure, never a skip.

What stands in for the administrator: apt answers "yes" by itself (APT::Get::Assume-Yes), and `editor` is a script
that makes the edits the README asks for (base_url, the alert webhook, the two credentials). The repository is
served over http from the host (the container shares the host's network) at the URL the README's placeholder
stands for; the backend and the alert webhook are stand-ins on the host's 127.0.0.1 too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from emailsync.store import db
from harness.app_database import USERS_TABLE, numbered_users
from harness.backend import Backend
from tests.nspawn import CONTAINER_PATH, Container, log, run_host

PROJECT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EMAIL_SYNC_BUILD_CACHE", "/var/cache/email-sync-build"))
DIST = Path(os.environ.get("DIST", PROJECT / "dist"))
ADMIN_URL = db.driver_url(
    os.environ.get("EMAIL_SYNC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
PLACEHOLDER = "https://packages.example.org/email-sync"
TOKEN = "installed-token-8Kq2w"
USERS = 5


def releases() -> list[str]:
    """The releases to prove: $EMAIL_SYNC_SUITES (set by deb-test.sh), else every line of packaging/releases."""
    listed = [line.split()[0] for line in (PROJECT / "packaging" / "releases").read_text().splitlines()]
    listed = [name for name in listed if not name.startswith("#")]
    wanted = os.environ.get("EMAIL_SYNC_SUITES", "").split() or listed
    unknown = set(wanted) - set(listed)
    assert not unknown, f"not in packaging/releases: {unknown}"
    return wanted


def readme_install() -> str:
    """The shell block of README.md's install section, as an administrator would paste it."""
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("## Install on Debian") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match and PLACEHOLDER in match[1], "README.md's install section has no ```sh block with the repository"
    return match[1]


@dataclass
class AppDatabase:
    """The application's database on the host's PostgreSQL (users + last_sync), as the container sees it."""

    engine: Engine
    url: str

    def scalar(self, sql: str) -> Any:
        with self.engine.begin() as connection:
            return connection.execute(text(sql)).scalar()

    def execute(self, sql: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql))

    def synced(self) -> int:
        return int(self.scalar("SELECT count(*) FROM users WHERE last_sync IS NOT NULL"))

    def add_users(self, count: int) -> None:
        after = "coalesce((SELECT max(id) FROM users), 0)"
        self.execute(numbered_users(f"{after} + 1", f"{after} + {count}"))


@contextlib.contextmanager
def app_database() -> Iterator[AppDatabase]:
    """A fresh database per release: each installation starts from the same users."""
    # pool_pre_ping: this suite runs for minutes, and a PostgreSQL restart in between must not fail it.
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"email_sync_installed_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name)
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.begin() as connection:
            connection.execute(text(USERS_TABLE["postgresql"]))
        app = AppDatabase(engine, url.set(drivername="postgresql").render_as_string(hide_password=False))
        app.add_users(USERS)
        yield app
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fast_backend() -> Iterator[str]:
    """harness/fast_backend.py in a process of its own (asyncio, keep-alive: not the bottleneck of a run of tens
    of thousands of calls, as the threaded stand-in would be); every POST answers 200. Its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.fast_backend", "--max-seconds", "1800"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"harness/fast_backend.py announced no port (exit {process.poll()})"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """apt's requests are not this suite's output."""


@dataclass
class Repository:
    """The signed apt repository, made by packaging/repo.sh and served over http on the host's 127.0.0.1."""

    suite: str
    root: Path
    url: str

    def publish(self, *debs: Path) -> None:
        """Make the repository hold exactly these packages (signed anew), as a maintainer's `make repo` does."""
        source = self.root.parent / "from" / self.suite
        shutil.rmtree(source.parent, ignore_errors=True)
        source.mkdir(parents=True)
        for deb in debs:
            shutil.copy2(deb, source)
        run_host(
            [str(PROJECT / "packaging" / "repo.sh"), "--from", str(source.parent), "--out", str(self.root)],
            timeout=120,
            env={**os.environ, "SUITE": self.suite, "EMAIL_SYNC_BUILD_CACHE": str(CACHE)},
        )


@contextlib.contextmanager
def served_repository(suite: str, directory: Path) -> Iterator[Repository]:
    """An empty repository of ``suite`` in ``directory``, served over http on a free port of the host's 127.0.0.1
    (the containers share the host's network) until the block ends."""
    directory.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Repository(suite, directory, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()


def only(pattern: str, directory: Path) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory} (run make deb and make deb-test): {found}"
    return found[0]


@dataclass
class Installed:
    """One release's booted container with email-sync installed by the README's flow, and its stand-ins."""

    suite: str
    container: Container
    repository: Repository
    database: AppDatabase
    backend: Backend
    webhook: Backend
    fixture_deb: Path
    current_deb: Path
    readme_output: str

    def version(self) -> str:
        return self.container.run("dpkg-query", "-W", "-f=${Version}", "email-sync").stdout

    def unit(self, unit: str, *properties: str) -> dict[str, str]:
        return self.container.show(unit, *properties)

    def wait_finished(self, invocation: str = "", timeout: float = 180) -> dict[str, str]:
        """The service's state once the run ``invocation`` (or whichever runs) is over."""

        def finished() -> dict[str, str] | None:
            state = self.unit(
                "email-sync.service",
                "ActiveState",
                "Result",
                "ExecMainStatus",
                "InvocationID",
                "ExecMainExitTimestampMonotonic",
            )
            over = state["ActiveState"] in ("inactive", "failed") and state["ExecMainExitTimestampMonotonic"] != "0"
            return state if over and invocation in ("", state["InvocationID"]) else None

        result: dict[str, str] = self.container.wait_for(
            "email-sync.service to finish", finished, timeout, interval=0.5
        )
        return result

    def dropin(self, name: str, body: str) -> None:
        self.container.write(f"/etc/systemd/system/email-sync.service.d/{name}.conf", body)
        self.container.run("systemctl", "daemon-reload")

    def remove_dropin(self, name: str) -> None:
        self.container.path(f"/etc/systemd/system/email-sync.service.d/{name}.conf").unlink()
        self.container.run("systemctl", "daemon-reload")


EDITOR = """#!/bin/sh
# Stands in for the administrator editing what README.md says to edit.
set -eu
case "$1" in
    /etc/email-sync/email-sync.toml)
        sed -i -e 's|^#base_url = .*|base_url = "{backend}"|' \\
            -e 's|^#webhook_url = .*|webhook_url = "{webhook}"|' "$1" ;;
    /etc/credstore/email-sync.database-url) printf '%s\\n' '{database}' >"$1" ;;
    /etc/credstore/email-sync.backend-token) printf '%s\\n' '{token}' >"$1" ;;
    *) echo "editor: unexpected file $1" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module", params=releases())
def installed(request: pytest.FixtureRequest) -> Iterator[Installed]:
    suite: str = request.param
    rootfs = CACHE / f"boot-{suite}"
    assert (CACHE / f"boot-{suite}.complete").exists(), f"no bootable {rootfs}: run make deb-test (it makes it)"
    current = only("email-sync_*_*.deb", DIST / suite)
    fixture = only("email-sync_*_*.deb", DIST / "fixtures" / suite)
    work = Path(tempfile.mkdtemp(prefix=f"installed-{suite}-", dir=CACHE))
    container: Container | None = None
    try:
        run_host(["cp", "-a", "--reflink=auto", str(rootfs), str(work / "root")], timeout=300)
        container = Container(work / "root", work / "console.log")
        log(f"{suite}: booting")
        container.boot()
        with (
            served_repository(suite, work / "repo") as repository,
            app_database() as database,
            Backend(token=TOKEN) as backend,
            Backend(sync_path="/hooks/email-sync") as webhook,
        ):
            repository.publish(fixture)  # the previous version first: the upgrade test moves to the current one
            container.write("/etc/apt/apt.conf.d/90assume-yes", 'APT::Get::Assume-Yes "true";\n')
            editor = EDITOR.format(
                backend=backend.base_url,
                webhook=f"{webhook.base_url}/hooks/email-sync",
                database=database.url,
                token=TOKEN,
            )
            container.write("/usr/local/bin/editor", editor, mode=0o700)
            log(f"{suite}: README.md's install section, with the repository at {repository.url}")
            script = readme_install().replace(PLACEHOLDER, repository.url)
            # root's login PATH on Debian, with /usr/local/bin (where the stand-in editor is)
            path = f"/usr/local/sbin:/usr/local/bin:{CONTAINER_PATH}"
            done = container.run("sh", "-euxc", script, check=False, timeout=900, env={"PATH": path})
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"the README's install flow failed on {suite}:\n{output[-6000:]}"
            yield Installed(suite, container, repository, database, backend, webhook, fixture, current, output)
    finally:
        if container is not None:
            container.poweroff()
        shutil.rmtree(work, ignore_errors=True)


def journal_lines(installed: Installed, *matches: str) -> list[dict[str, Any]]:
    return installed.container.journal(*matches)


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()
