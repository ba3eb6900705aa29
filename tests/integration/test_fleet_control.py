"""Fleet control from the database: `pause`, `drain` and `resume` reach the runs of every host within a second;
`park`/`unpark` set one user aside; `run --dry-run` tells whom a run would take. Two hosts are two real
`email-sync run` processes (distinct host ids) against one PostgreSQL, calling a real slow backend."""

from __future__ import annotations

import json
import time
from collections import Counter
from subprocess import Popen

import pytest

from emailsync.errors import EXIT_NO, EXIT_OK, EXIT_USAGE
from emailsync.store import db
from emailsync.store.control import READ_EVERY
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync

USERS = 400
LATENCY = 0.3  # seconds per call: 2 hosts x 4 calls in flight sync about 27 users/s, so a run lasts ~15 s


def start_two_hosts(pg: AppDb, backend: Backend, email_sync: EmailSync) -> list[Popen[str]]:
    pg.add_users(USERS)
    backend.latency = LATENCY
    email_sync.configure(pg, backend, logging={"level": "warning"})
    hosts = [email_sync.popen("run", env={"EMAIL_SYNC_SYNC_HOST_ID": f"host-{n}"}) for n in range(2)]
    assert backend.wait_for_sync_calls(40, timeout=30), "both hosts started calling"
    return hosts


def finish(hosts: list[Popen[str]]) -> list[int]:
    for host in hosts:
        host.communicate(timeout=60)
    return [host.returncode for host in hosts]


def calls_after(backend: Backend, moment: float) -> list[int]:
    return [call.user_id for call in backend.sync_calls() if call.at > moment]


def assert_nobody_synced_twice_and_no_lease_left(pg: AppDb, backend: Backend) -> None:
    calls = Counter(call.user_id for call in backend.sync_calls())
    assert set(calls.values()) == {1}, "a user was called twice"
    assert pg.synced_ids() == set(calls), "every call's user is recorded, and only they"
    assert pg.leased() == []


def test_pause_stops_the_runs_of_both_hosts_within_a_second_and_they_exit_healthy(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    hosts = start_two_hosts(pg, backend, email_sync)

    assert email_sync("pause", "--reason", "backend maintenance").code == EXIT_OK
    paused = time.monotonic()

    assert finish(hosts) == [EXIT_OK, EXIT_OK]
    # A run reads the fleet's mode at most READ_EVERY apart (its loop turns every 0.2 s); what it had started by
    # then finishes. Without the pause, the runs would go on calling for another ten seconds.
    assert calls_after(backend, paused + READ_EVERY + 1.0) == []
    assert len(pg.synced_ids()) < USERS / 2, "the pause came early in the runs"
    assert_nobody_synced_twice_and_no_lease_left(pg, backend)
    runs = pg.runs()
    assert [run.outcome for run in runs] == ["paused", "paused"]


def test_drain_lets_both_hosts_sync_every_user_they_hold_and_claim_nobody_more(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    hosts = start_two_hosts(pg, backend, email_sync)

    assert email_sync("drain", "--reason", "deploy").code == EXIT_OK

    assert finish(hosts) == [EXIT_OK, EXIT_OK]
    runs = pg.runs()
    assert [run.outcome for run in runs] == ["drained", "drained"]
    assert [run.skipped for run in runs] == [0, 0], "every claim held was called"
    assert sum(run.synced for run in runs) == len(pg.synced_ids()) < USERS
    assert_nobody_synced_twice_and_no_lease_left(pg, backend)


def test_a_run_of_a_paused_fleet_claims_nobody_and_needs_no_backend(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(5)
    email_sync.configure(pg, None)  # a backend that refuses connections: the health check would fail (75)
    email_sync("pause", "--reason", "backend down for the upgrade")

    result = email_sync("run")

    assert result.code == EXIT_OK
    assert result.event("fleet_halted")["mode"] == "paused"
    [run] = pg.runs()
    assert (run.outcome, run.due, run.synced) == ("paused", 5, 0)
    assert pg.leased() == []


def test_status_shows_who_paused_the_fleet_when_and_why(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend)
    email_sync("pause", "--reason", "backend maintenance")
    email_sync("run")

    text, report = email_sync("status"), email_sync("status", "--json")

    assert text.code == EXIT_OK, "a paused fleet is not a failure: the operator asked for it"
    assert "fleet: paused by " in text.stdout and ": backend maintenance, since " in text.stdout
    fleet = json.loads(report.stdout)["fleet"]
    assert (fleet["mode"], fleet["reason"]) == ("paused", "backend maintenance")
    assert "@" in fleet["changed_by"] and fleet["changed_at"]


def test_resume_lets_the_next_run_sync_again(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend)
    email_sync("drain")
    email_sync("run")

    assert email_sync("resume").code == EXIT_OK
    assert email_sync("run").code == EXIT_OK

    assert pg.synced_ids() == {1, 2, 3}
    assert [run.outcome for run in pg.runs()] == ["drained", "ok"]


def test_a_parked_user_is_not_synced_until_unparked(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend)

    assert email_sync("park", "user2@example.com", "--reason", "mailbox being migrated").code == EXIT_OK
    email_sync("run")
    assert pg.synced_ids() == {1, 3}
    assert backend.sync_calls(2) == []

    assert email_sync("unpark", "2").code == EXIT_OK
    email_sync("run")
    assert pg.synced_ids() == {1, 2, 3}


def test_users_parked_lists_who_parked_them_and_why(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(2)
    email_sync.configure(pg, backend)
    email_sync("park", "2", "--reason", "mailbox being migrated")

    listed = email_sync("users", "--parked").stdout.splitlines()

    assert len(listed) == 1
    assert listed[0].startswith("2 ") and "by " in listed[0] and listed[0].endswith("mailbox being migrated")


def test_sync_of_a_parked_user_is_refused_with_exit_2(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)
    email_sync("park", "1", "--reason", "mailbox being migrated")

    result = email_sync("sync", "1")

    result.assert_one_clear_error(EXIT_NO, "parked", "mailbox being migrated", "unpark")
    assert backend.sync_calls() == []


@pytest.mark.parametrize("command", ["park", "unpark"])
def test_park_or_unpark_of_an_unknown_user_exits_64(command: str, pg: AppDb, email_sync: EmailSync) -> None:
    email_sync.configure(pg, None)
    extra = ["--reason", "x"] if command == "park" else []

    email_sync(command, "nobody@example.com", *extra).assert_one_clear_error(EXIT_USAGE, "nobody@example.com")


def test_unpark_of_a_user_not_parked_exits_64(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(1)
    email_sync.configure(pg, None)

    email_sync("unpark", "1").assert_one_clear_error(EXIT_USAGE, "not parked")


def test_a_dry_run_says_whom_a_run_would_claim_and_takes_nothing(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2, age=7200, start=1)
    pg.add_users(3, age=None, start=3)
    pg.add_users(1, age=60, start=6)  # synced a minute ago: not due
    email_sync.configure(pg, backend, sync={"max_users_per_run": 4})

    result = email_sync("run", "--dry-run", "--limit", "3")

    assert result.code == EXIT_OK
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "fleet: running",
        "due now: 5; a run with --limit 3 would claim 3 (sync.max_users_per_run 4)",
        "oldest due: last synced 2h00m ago (3 never synced)",
    ]
    assert lines[3] == "the first 3, in the order a run takes them:"
    assert sorted(line.split()[0] for line in lines[4:]) == ["3", "4", "5"], "the never synced come first"
    assert backend.requests() == [], "no health check, no call"
    assert pg.runs() == [] and pg.scalar(f"SELECT count(*) FROM {db.STATE}") == 0


def test_a_dry_run_of_a_paused_fleet_says_a_run_would_claim_nobody(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    email_sync.configure(pg, backend)
    email_sync("pause", "--reason", "maintenance")

    lines = email_sync("run", "--dry-run").stdout.splitlines()

    assert lines[0].startswith("fleet: paused by ") and lines[0].endswith(": maintenance")
    assert lines[1] == "due now: 2; a run would claim 0 (sync.max_users_per_run 100000)"


def test_check_passes_on_a_paused_fleet_but_says_who_paused_it(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(pg, backend)
    assert "✔ fleet: running" in email_sync("check").stdout
    email_sync("pause", "--reason", "backend maintenance")

    result = email_sync("check")

    assert result.code == EXIT_OK
    [line] = [line for line in result.stdout.splitlines() if line.startswith("! fleet: ")]
    assert line.startswith("! fleet: paused by ") and line.endswith(": backend maintenance")
