"""Fixtures of the rolling upgrade: three booted containers of one Debian release, each a host of one fleet on the
host machine's PostgreSQL, email-sync installed from a signed apt repository and its timer on and sped up.

Run by `make deb-test` (packaging/deb-test.sh, step rolling), which builds what this needs and names it in
$EMAIL_SYNC_ROLLING_DEBS: the previous release (built from its own commit), this release, and a next release that
exists only for this test (this tree with one more schema step and one more configuration key). Anything missing is
a failure, never a skip.

The hosts are configured as README.md's install section says (/etc/email-sync/email-sync.toml edited, the two
credentials in /etc/credstore), and upgraded by Debian's unattended-upgrades, with email-sync's repository among its
origins, as docs/operations.md says. unattended-upgrades skips a package whose upgrade would ask about a conffile:
each upgrade going through, with the admin's file as it was, is what "upgrades need nobody" means for the package.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from harness.backend import Backend
from tests.installed.conftest import (
    CACHE,
    TOKEN,
    AppDatabase,
    Repository,
    app_database,
    deb_field,
    served_repository,
)
from tests.nspawn import Container, log, run_host

HOSTS = ("host-a", "host-b", "host-c")
UNIT = "email-sync.service"
UPGRADING = "/run/systemd/system/email-sync.service.d/upgrading.conf"
TIMER = "email-sync.timer"
# The timer every few seconds instead of every 5 minutes, each start a little apart (as RandomizedDelaySec= does
# for a real fleet): the hosts' runs overlap all the time, and each upgrade meets runs of the others. An empty
# OnUnitInactiveSec= resets every trigger of the timer, OnBootSec= too: OnActiveSec= gives the first run.
FAST_TIMER = (
    "[Timer]\nOnUnitInactiveSec=\nOnActiveSec=1s\nOnUnitInactiveSec=4s\nRandomizedDelaySec=3s\nAccuracySec=1s\n"
)
CONFIG = "/etc/email-sync/email-sync.toml"
# What apt-daily-upgrade.service does, run now (its timers are masked: a run at a random time is not this test's):
# the lists, then unattended-upgrades, with no terminal and nothing on stdin to answer a question.
UPGRADE = "apt-get update -q && unattended-upgrade -v </dev/null"
# email-sync's repository as unattended-upgrades' only origin. An admin adds it to Debian's (docs/operations.md);
# here Debian's are cleared: the cached container image may be older than the mirror, and upgrading the rest of
# Debian is not what this test is about.
UNATTENDED = """#clear Unattended-Upgrade::Origins-Pattern;
Unattended-Upgrade::Origins-Pattern {{ "origin=email-sync,codename={suite}"; }};
"""

INSTALL = """
install -d -m 0755 /etc/apt/keyrings
curl -fsSL -o /etc/apt/keyrings/email-sync-archive-keyring.gpg {repository}/email-sync-archive-keyring.gpg
cat >/etc/apt/sources.list.d/email-sync.sources <<END
Types: deb
URIs: {repository}
Suites: {suite}
Components: main
Signed-By: /etc/apt/keyrings/email-sync-archive-keyring.gpg
END
apt-get update -q
apt-get install -y -q email-sync
sed -i -e 's|^#base_url = .*|base_url = "{backend}"|' -e 's|^#sync_path = .*|sync_path = "{sync_path}"|' \\
    -e 's|^#webhook_url = .*|webhook_url = "{webhook}"|' /etc/email-sync/email-sync.toml
printf '%s' '{unattended}' >/etc/apt/apt.conf.d/51email-sync-unattended
systemctl mask --now apt-daily.timer apt-daily-upgrade.timer
install -d -m 0700 /etc/credstore
install -m 0600 /dev/null /etc/credstore/email-sync.database-url
printf '%s\\n' '{database}' >/etc/credstore/email-sync.database-url
install -m 0600 /dev/null /etc/credstore/email-sync.backend-token
printf '%s\\n' '{token}' >/etc/credstore/email-sync.backend-token
mkdir -p /etc/systemd/system/email-sync.timer.d
printf '{timer}' >/etc/systemd/system/email-sync.timer.d/fast.conf
systemctl daemon-reload
"""


def releases() -> tuple[Path, Path, Path]:
    """The previous release, this one and the test-only next one, in that order, as deb-test.sh names them."""
    debs = [Path(name) for name in os.environ.get("EMAIL_SYNC_ROLLING_DEBS", "").split()]
    assert len(debs) == 3, "EMAIL_SYNC_ROLLING_DEBS must name 3 .debs (run make deb-test, step rolling)"
    missing = [deb for deb in debs if not deb.is_file()]
    assert not missing, f"missing {missing} (run make deb-test, step rolling)"
    return debs[0], debs[1], debs[2]


def upstream(deb: Path) -> str:
    """The release as email-sync reports it (``__version__``): the package version without its Debian revision."""
    return deb_field(deb, "Version").rsplit("-", 1)[0]


@dataclass
class Host:
    """One host of the fleet: a booted container, its hostname (and so its sync.host_id) is its name."""

    name: str
    container: Container
    upgrades: list[tuple[float, float]] = field(default_factory=list)  # (started, done) wall clock of each

    def version(self) -> str:
        return self.container.run("dpkg-query", "-W", "-f=${Version}", "email-sync").stdout

    def unit(self, *properties: str) -> dict[str, str]:
        return self.container.show(UNIT, *properties)

    def config(self) -> bytes:
        return self.container.path(CONFIG).read_bytes()

    def upgrade(self) -> None:
        """unattended-upgrades upgrades email-sync, and the admin's configuration stays as it was."""
        log(f"{self.name}: {UPGRADE}")
        before, config = self.version(), self.config()
        started = time.time()
        done = self.container.sh(UPGRADE, timeout=600)
        self.upgraded(started, before, config, done.stdout + done.stderr)

    def upgraded(self, started: float, before: str, config: bytes, output: str = "") -> None:
        """Record an upgrade that started at ``started`` from version ``before``, and check what every upgrade
        leaves: a new version, the admin's configuration byte for byte, and no hold on the runs (preinst's)."""
        self.upgrades.append((started, time.time()))
        assert self.version() != before, f"{self.name}: email-sync was not upgraded from {before}:\n{output[-4000:]}"
        assert self.config() == config, f"{self.name}: the upgrade changed {CONFIG}"
        self.container.sh(f"! test -e {UPGRADING}")
        skipped = [
            entry
            for entry in self.container.journal(f"UNIT={UNIT}", "_PID=1")
            if "exec-condition" in str(entry.get("MESSAGE", "")) and int(entry["__REALTIME_TIMESTAMP"]) / 1e6 > started
        ]
        log(f"{self.name}: upgraded to {self.version()}; {len(skipped)} start(s) skipped during the upgrade")

    def exits(self) -> list[tuple[str, float]]:
        """Each run of the service that failed, as systemd logs its end ("exited/78", "killed/KILL", ...), and when
        (systemd logs "Main process exited" only for an end other than status 0)."""
        ends = []
        for entry in self.container.journal(f"UNIT={UNIT}", "_PID=1"):
            match = re.search(r"Main process exited, code=(\w+), status=(\w+)", str(entry.get("MESSAGE", "")))
            if match:
                ends.append((f"{match[1]}/{match[2]}", int(entry["__REALTIME_TIMESTAMP"]) / 1e6))
        return ends

    def failures(self) -> list[tuple[str, float, str]]:
        """Each failed run, whatever failed it (an exit status, a signal, the watchdog, a protocol error): systemd's
        "Failed with result" line, its time and the run's invocation id (which its OnFailure alert carries)."""
        return [
            (str(entry["MESSAGE"]), int(entry["__REALTIME_TIMESTAMP"]) / 1e6, str(entry.get("INVOCATION_ID", "")))
            for entry in self.container.journal(f"UNIT={UNIT}", "_PID=1")
            if "Failed with result" in str(entry.get("MESSAGE", ""))
        ]

    def journal_before(self, at: float, seconds: float = 15) -> str:
        """What the service logged in the ``seconds`` before ``at``: the why of a failure, for an assertion."""
        return self.container.run(
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            UNIT,
            "-u",
            "email-sync-alert@*",
            f"--since=@{at - seconds:.0f}",
            f"--until=@{at + 1:.0f}",
            timeout=30,
        ).stdout[-4000:]


@dataclass
class Fleet:
    suite: str
    hosts: dict[str, Host]
    repository: Repository
    database: AppDatabase
    backend: Backend
    webhook: Backend
    previous: Path
    current: Path
    next: Path

    def schema_version(self) -> int:
        return int(self.database.scalar("SELECT max(version) FROM email_sync_schema"))

    def migrated_at(self, version: int) -> float:
        sql = f"SELECT extract(epoch FROM applied_at) FROM email_sync_schema WHERE version = {version}"
        return float(self.database.scalar(sql))

    def runs(self) -> list[dict[str, Any]]:
        with self.database.engine.begin() as connection:
            rows = connection.execute(text("SELECT * FROM email_sync_runs ORDER BY started_at")).mappings()
            return [dict(row) for row in rows]

    def wait(self, what: str, predicate: Any, timeout: float = 300) -> Any:
        return next(iter(self.hosts.values())).container.wait_for(what, predicate, timeout, interval=0.5)

    def running_with_leases(self, host: Host) -> str:
        """The id of the host's run in progress holding live leases (calls in flight or queued), else ""."""
        value = self.database.scalar(
            "SELECT r.id FROM email_sync_runs r JOIN email_sync_user_state s ON s.lease_owner = r.id "
            f"WHERE r.host = '{host.name}' AND r.outcome = 'running' AND s.lease_until > now() LIMIT 1"
        )
        return str(value or "")


def _install(host: Host, script: str) -> None:
    done = host.container.run("sh", "-euxc", script, check=False, timeout=900)
    assert done.returncode == 0, f"{host.name}: install failed:\n{(done.stdout + done.stderr)[-6000:]}"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    suite = os.environ.get("EMAIL_SYNC_ROLLING_SUITE", "")
    assert suite, "EMAIL_SYNC_ROLLING_SUITE is not set (run make deb-test, step rolling)"
    previous, current, next_ = releases()
    rootfs = CACHE / f"rolling-{suite}"
    assert (CACHE / f"rolling-{suite}.complete").exists(), f"no bootable {rootfs}: run make deb-test (it makes it)"
    work = Path(tempfile.mkdtemp(prefix=f"rolling-{suite}-", dir=CACHE))
    containers: list[Container] = []
    try:
        hosts = {}
        for name in HOSTS:
            run_host(["cp", "-a", "--reflink=auto", str(rootfs), str(work / name)], timeout=300)
            container = Container(work / name, work / f"{name}.console.log")
            container.write("/etc/hostname", f"{name}\n")  # and so its sync.host_id
            containers.append(container)
            log(f"{suite}: booting {name}")
            container.boot()
            hosts[name] = Host(name, container)
        # Each host's systemd manages a cgroup tree of its own (tests/nspawn.py says why).
        inits = {Path(f"/proc/{container.leader}/cgroup").read_text() for container in containers}
        assert len(inits) == len(containers), f"the hosts' systemd share a cgroup: {inits}"
        with (
            served_repository(suite, work / "repo") as repository,
            app_database() as database,
            Backend(token=TOKEN) as backend,
            Backend(sync_path="/hooks/email-sync") as webhook,
        ):
            repository.publish(previous)
            script = INSTALL.format(
                repository=repository.url,
                suite=suite,
                backend=backend.base_url,
                sync_path=backend.sync_path,  # the releases' defaults differ: the one the backend serves, for all
                webhook=f"{webhook.base_url}/hooks/email-sync",
                database=database.url,
                token=TOKEN,
                timer=FAST_TIMER.replace("\n", "\\n"),
                unattended=UNATTENDED.format(suite=suite),
            )
            with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
                list(pool.map(lambda host: _install(host, script), hosts.values()))
            yield Fleet(suite, hosts, repository, database, backend, webhook, previous, current, next_)
    finally:
        for container in containers:
            container.poweroff()
        shutil.rmtree(work, ignore_errors=True)
