"""A fleet upgraded one host at a time by unattended-upgrades, with every timer on.

Three hosts on one PostgreSQL, email-sync from the signed repository, a run every few seconds on each, and each
host's /etc/email-sync/email-sync.toml edited by its admin. The tests run in this file's order on the same fleet:
the previous release installed, the rolling upgrade to this release, then the rolling upgrade from this release to a
next one that adds a schema step and a configuration key (built for this test only, since standing aside is this
release's behaviour: only a host running it can show it). In each rolling upgrade the first host is upgraded while
its run is mid-cycle, calls in flight. Every upgrade asks nothing and keeps the admin's file byte for byte.

Throughout, the backend's request log is the oracle for "never twice in a window": the whole story takes minutes,
well within one sync.interval, so every user must have been called exactly once at the end.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from sqlalchemy import text

from tests.installed.conftest import deb_field
from tests.nspawn import log
from tests.rolling.conftest import TIMER, UNIT, Fleet, Host, upstream

pytestmark = pytest.mark.timeout(1800)

# A run's outcomes in a rolling upgrade: synced, stood aside (older than the schema), or stopped by an upgrade.
HEALTHY = ("ok", "stood_aside", "interrupted")
EXAMPLE = "/usr/share/doc/email-sync/examples/email-sync.toml"  # every key, commented out: the reference
NEXT_KEY = "next_release_probe"  # the key only the test-only next release has (packaging/deb-test.sh)


def users(fleet: Fleet) -> set[str]:
    with fleet.database.engine.begin() as connection:
        return {str(row[0]) for row in connection.execute(text("SELECT id FROM users"))}


def wait_everyone_synced(fleet: Fleet) -> None:
    fleet.wait(
        "every due user synced",
        lambda: fleet.database.scalar("SELECT count(*) FROM users WHERE last_sync IS NULL") == 0,
    )


def assert_each_user_called_once(fleet: Fleet) -> None:
    calls = Counter(str(call.user_id) for call in fleet.backend.sync_calls())
    twice = {user: n for user, n in calls.items() if n > 1}
    assert not twice, f"users called more than once in one window: {twice}"
    assert set(calls) == users(fleet), f"never called: {sorted(users(fleet) - set(calls))[:20]}"


def run_outcome(fleet: Fleet, run_id: str) -> str:
    return str(fleet.database.scalar(f"SELECT outcome FROM email_sync_runs WHERE id = '{run_id}'"))


def upgrade_mid_cycle(fleet: Fleet, host: Host) -> None:
    """Upgrade ``host`` while its run holds leases with calls in flight: the backend answers slowly, and enough
    users are due to keep three hosts busy for longer than the upgrade takes. The upgrade stops that run before
    dpkg replaces a file the run could still import, as systemd stops a run: the calls in flight finish and are
    recorded, the rest of its claims are released (the fleet syncs them, each once), and it ends "interrupted", a
    healthy outcome: exit 0, no alert."""
    fleet.backend.latency = 8.0
    fleet.database.add_users(300)
    run_id = fleet.wait(f"{host.name} mid-cycle", lambda: fleet.running_with_leases(host), timeout=120)
    log(f"{host.name}: upgrading during its run {run_id}")
    try:
        host.upgrade()
    finally:
        fleet.backend.latency = 0.0
    assert run_outcome(fleet, run_id) == "interrupted", "the upgrade did not stop the run before replacing its files"


def upgrade_unpacked_then_configured(host: Host) -> None:
    """The upgrade as apt makes it in a long `apt upgrade`: dpkg unpacks every package first and configures them
    afterwards, and another package's postinst reloads systemd in between. So systemd may load the new release's
    units before its postinst has made what they name: this release's unit joins the group email-sync-metrics,
    which its postinst creates (sysusers.d), and the previous release has no such group. The hold the preinst puts
    on the runs skips every start until postinst; the same unit without the hold fails to start."""
    c = host.container
    before, config = host.version(), host.config()
    started = time.time()
    c.sh("cd /root && apt-get update -q && apt-get download -q email-sync </dev/null", timeout=300)
    c.sh("dpkg --unpack /root/email-sync_*.deb </dev/null", timeout=300)
    assert c.run("dpkg-query", "-W", "-f=${Status}", "email-sync").stdout == "install ok unpacked"
    assert c.run("getent", "group", "email-sync-metrics", check=False).returncode == 2, "the group already exists"
    c.run("systemctl", "daemon-reload")  # another package's postinst
    cursor = c.cursor()
    c.run("systemctl", "start", UNIT, check=False)  # the timer's next start, now
    c.wait_for(
        "the start held back by the upgrade",
        lambda: [e for e in c.journal(f"UNIT={UNIT}", "_PID=1", after=cursor) if "exec-condition" in str(e["MESSAGE"])],
        timeout=30,
    )
    held = c.journal(f"UNIT={UNIT}", "_PID=1", after=cursor)
    assert not [e["MESSAGE"] for e in held if "Failed with result" in str(e["MESSAGE"])], "a held start failed"
    unheld = "/run/systemd/system/email-sync-unheld.service"  # the same unit, with no hold and no OnFailure=
    c.sh(f"sed -e '/^OnFailure=/d' -e '/^After=email-sync-alert/d' /usr/lib/systemd/system/{UNIT} >{unheld}")
    try:
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "start", "email-sync-unheld.service", check=False)
        state = c.show("email-sync-unheld.service", "Result", "ExecMainStatus")
        assert state == {"Result": "exit-code", "ExecMainStatus": "216"}, state  # 216: systemd's EXIT_GROUP
    finally:
        c.run("rm", "-f", unheld)
        c.run("systemctl", "reset-failed", "email-sync-unheld.service", check=False)
        c.run("systemctl", "daemon-reload")
    c.sh("dpkg --configure email-sync </dev/null", timeout=300)
    host.upgraded(started, before, config)
    assert c.run("getent", "group", "email-sync-metrics", check=False).returncode == 0


def wait_each_host_ran(fleet: Fleet, release: str, since: float) -> None:
    """Each host has finished a run of ``release`` with outcome ok that started after ``since`` (epoch seconds)."""
    for host in fleet.hosts.values():
        fleet.wait(
            f"{host.name}: a run of {release} ending ok",
            lambda host=host: fleet.database.scalar(
                f"SELECT count(*) FROM email_sync_runs WHERE host = '{host.name}' AND outcome = 'ok' "
                f"AND release = '{release}' AND started_at > to_timestamp({since})"
            ),
        )


def test_three_hosts_on_the_previous_release_share_one_database_and_sync_each_user_once(fleet: Fleet) -> None:
    previous = deb_field(fleet.previous, "Version")
    a = fleet.hosts["host-a"]
    for host in fleet.hosts.values():
        assert host.version() == previous
    a.container.run("email-sync", "migrate")  # the previous release's README: run migrate once, then the timers
    for host in fleet.hosts.values():
        host.container.run("systemctl", "enable", "--now", TIMER)
    fleet.database.add_users(95)
    wait_everyone_synced(fleet)
    fleet.wait(
        "a run of each host", lambda: fleet.database.scalar("SELECT count(DISTINCT host) FROM email_sync_runs") == 3
    )
    assert {run["host"] for run in fleet.runs()} == set(fleet.hosts)
    assert_each_user_called_once(fleet)
    assert [host.exits() for host in fleet.hosts.values()] == [[], [], []]


def test_rolling_upgrade_from_the_previous_release_needs_nobody_and_only_hosts_still_on_it_fail(fleet: Fleet) -> None:
    """The previous release cannot stand aside (that is this release's feature): once the first upgraded host has
    migrated, a host still on it exits 78 at each run until it is upgraded, as this release's NEWS.Debian says.
    What this release promises holds: nobody types migrate, no run of it fails, nobody is synced twice, and
    everybody due is synced."""
    a, b, c = (fleet.hosts[name] for name in ("host-a", "host-b", "host-c"))
    current, release = deb_field(fleet.current, "Version"), upstream(fleet.current)
    fleet.repository.publish(fleet.previous, fleet.current)
    before = fleet.schema_version()
    upgrade_mid_cycle(fleet, b)
    fleet.wait("the upgraded host's run to apply the schema step", lambda: fleet.schema_version() > before)
    migrated_at = fleet.migrated_at(fleet.schema_version())
    fleet.database.add_users(50)
    upgrade_unpacked_then_configured(a)
    fleet.database.add_users(50)
    c.upgrade()
    since = max(done for host in fleet.hosts.values() for _, done in host.upgrades)
    fleet.database.add_users(50)
    wait_everyone_synced(fleet)
    wait_each_host_ran(fleet, release, since)

    assert [host.version() for host in fleet.hosts.values()] == [current] * 3
    assert_each_user_called_once(fleet)
    assert b.exits() == [], "a host upgraded before the schema step failed a run"
    for host in (a, c):
        upgraded = host.upgrades[-1][1]
        for how, at in host.exits():
            why = host.journal_before(at)
            assert how == "exited/78", f"{host.name}: a run ended {how}:\n{why}"
            assert migrated_at <= at <= upgraded, f"{host.name}: a failed run outside [migration, its upgrade]:\n{why}"
            assert "newer than this email-sync" in why, why
    runs = fleet.runs()
    assert [run for run in runs if run["release"] == release and run["outcome"] not in (*HEALTHY, "running")] == []
    assert {run["release"] for run in runs if run["started_at"].timestamp() > since} == {release}


def test_rolling_upgrade_from_this_release_fails_no_run_and_older_hosts_stand_aside(fleet: Fleet) -> None:
    """From this release on, a rolling upgrade through a schema step is quiet: the hosts not yet upgraded stand aside
    (exit 0, no alert), `status` names them, and the upgraded hosts do the work. The next release's reference has a
    key more, and each admin's configuration, which does not, is kept as it was with nobody asked."""
    a, b, c = (fleet.hosts[name] for name in ("host-a", "host-b", "host-c"))
    release, nxt = upstream(fleet.current), upstream(fleet.next)
    assert NEXT_KEY not in c.container.path(EXAMPLE).read_text()
    started = time.time()
    failed_before = {invocation for host in fleet.hosts.values() for _, _, invocation in host.failures()}
    fleet.repository.publish(fleet.previous, fleet.current, fleet.next)
    before = fleet.schema_version()

    upgrade_mid_cycle(fleet, c)
    fleet.wait("the upgraded host's run to apply the schema step", lambda: fleet.schema_version() == before + 1)
    migrated_at = fleet.migrated_at(before + 1)
    for host in (a, b):
        fleet.wait(
            f"{host.name} standing aside",
            lambda host=host: fleet.database.scalar(
                f"SELECT count(*) FROM email_sync_runs WHERE host = '{host.name}' AND outcome = 'stood_aside' "
                f"AND release = '{release}' AND started_at > to_timestamp({migrated_at})"
            ),
        )
    status = c.container.run("email-sync", "status", "--json", check=False)  # its exit code is the fleet's health
    awaiting = {host["host"]: host["release"] for host in json.loads(status.stdout)["awaiting_upgrade"]}
    assert awaiting == {"host-a": release, "host-b": release}, awaiting
    fleet.database.add_users(50)
    a.upgrade()
    fleet.database.add_users(50)
    b.upgrade()
    since = max(host.upgrades[-1][1] for host in fleet.hosts.values())
    fleet.database.add_users(50)
    wait_everyone_synced(fleet)
    wait_each_host_ran(fleet, nxt, since)

    assert [host.version() for host in fleet.hosts.values()] == [deb_field(fleet.next, "Version")] * 3
    for host in fleet.hosts.values():
        assert f"#{NEXT_KEY} = " in host.container.path(EXAMPLE).read_text()
        assert f"#{NEXT_KEY} = " in host.container.run("email-sync", "config", "--sample").stdout
        assert NEXT_KEY not in host.config().decode()
    assert_each_user_called_once(fleet)
    for host in fleet.hosts.values():
        failed = [(message, at) for message, at, _ in host.failures() if at > started]
        assert not failed, f"{host.name}: {failed}:\n" + "\n".join(host.journal_before(at) for _, at in failed)
    # A "resolved" is the end of the streak of the previous upgrade's failures, sent by a run that succeeded.
    alerts = [call.json for call in fleet.webhook.sync_calls() if call.json.get("event") != "resolved"]
    alerts = [alert for alert in alerts if alert.get("invocation_id") not in failed_before]
    assert alerts == [], "an OnFailure alert of a run of this rolling upgrade"
    runs = [run for run in fleet.runs() if run["started_at"].timestamp() > migrated_at]
    assert [run for run in runs if run["outcome"] not in (*HEALTHY, "running")] == []
    stood_aside = {run["host"] for run in runs if run["outcome"] == "stood_aside"}
    assert stood_aside == {"host-a", "host-b"}
    assert {run["release"] for run in runs if run["outcome"] == "stood_aside"} == {release}
