"""Several hosts sharing the work through PostgreSQL's row locks: every user exactly once, whatever the clocks."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from harness.backend import Backend
from tests.conftest import AppDb, EmailSync


def faketime(offset: str) -> list[str]:
    """The command prefix running a process with its clock moved by ``offset`` (e.g. "-10m")."""
    path = shutil.which("faketime")
    if path is None:
        pytest.fail("faketime is missing: `make test` installs it (apt-get install faketime)")
    return [path, "-f", offset]


def run_hosts(email_sync: EmailSync, clocks: list[str]) -> list[str]:
    processes = [
        email_sync.popen(
            "run",
            env={"EMAIL_SYNC_SYNC_HOST_ID": f"host-{n}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
            prefix=faketime(clock) if clock else [],
        )
        for n, clock in enumerate(clocks)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * len(clocks), outputs
    return outputs


def assert_each_synced_once(pg: AppDb, backend: Backend, count: int, hosts: int) -> None:
    calls = Counter(call.user_id for call in backend.sync_calls())
    never = sorted(set(range(1, count + 1)) - set(calls))
    assert not never, f"never called: {len(never)} users, e.g. {pg.state(never[0])}, runs {pg.runs()}"
    assert set(calls.values()) == {1}, "some users were called twice"
    assert pg.synced_ids() == set(range(1, count + 1))
    assert pg.scalar("SELECT count(*) FROM email_sync_user_state WHERE lease_owner IS NOT NULL") == 0
    runs = pg.runs()
    assert len(runs) == hosts and sum(run.synced for run in runs) == count


def test_four_hosts_sync_twenty_thousand_users_exactly_once(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(20_000)
    email_sync.configure(pg, backend, backend={"concurrency": 8}, logging={"level": "warning"})

    run_hosts(email_sync, ["", "", "", ""])

    assert_each_synced_once(pg, backend, 20_000, hosts=4)


def test_hosts_with_clocks_ten_minutes_apart_still_sync_exactly_once(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2_000)
    email_sync.configure(pg, backend, backend={"concurrency": 8}, logging={"level": "warning"})

    run_hosts(email_sync, ["-10m", "+10m", "-10m", "+10m"])

    assert_each_synced_once(pg, backend, 2_000, hosts=4)


@pytest.mark.parametrize(
    ("host_clock", "synced_ago", "due"),
    [("+2h", 59 * 60, False), ("-2h", 61 * 60, True)],
)
def test_only_the_database_clock_decides_who_is_due(
    host_clock: str, synced_ago: int, due: bool, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1, age=synced_ago)
    email_sync.configure(pg, backend)

    run_hosts(email_sync, [host_clock])

    assert (len(backend.sync_calls()) == 1) is due
