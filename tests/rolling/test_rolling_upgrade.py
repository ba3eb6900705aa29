"""A fleet upgraded one host at a time, as unattended-upgrades does it, with every timer on.

Three hosts on one PostgreSQL, email-sync from the signed repository, a run every few seconds on each. The tests
run in this file's order on the same fleet: the previous release installed, the rolling upgrade to this release,
then the rolling upgrade from this release to a next one that adds a schema step (built for this test only, since
standing aside is this release's behaviour: only a host running it can show it). In each rolling upgrade the first
host is upgraded while its run is mid-cycle, calls in flight.

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
from tests.rolling.conftest import TIMER, Fleet, Host, upstream

pytestmark = pytest.mark.timeout(1800)

HEALTHY = ("ok", "stood_aside")


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
    users are due to keep three hosts busy for longer than apt takes. Then the run ends as it would have."""
    fleet.backend.latency = 8.0
    fleet.database.add_users(300)
    run_id = fleet.wait(f"{host.name} mid-cycle", lambda: fleet.running_with_leases(host), timeout=120)
    running = host.unit("InvocationID", "ActiveState")
    log(f"{host.name}: upgrading during its run {run_id}")
    before = host.version()
    host.upgrade()
    assert host.version() != before, f"{host.name}: apt upgraded nothing"
    try:
        assert host.unit("InvocationID", "ActiveState") == running, "the upgrade stopped the running cycle"
        assert run_outcome(fleet, run_id) == "running", "the cycle ended before the upgrade did: not mid-cycle"
    finally:
        fleet.backend.latency = 0.0
    fleet.wait(f"{host.name}'s run {run_id} to end", lambda: run_outcome(fleet, run_id) != "running")
    assert run_outcome(fleet, run_id) == "ok"


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
    a.upgrade()
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
    (exit 0, no alert), `status` names them, and the upgraded hosts do the work."""
    a, b, c = (fleet.hosts[name] for name in ("host-a", "host-b", "host-c"))
    release, nxt = upstream(fleet.current), upstream(fleet.next)
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
