"""Leases on users: how long a failed user waits before it is due again, that only the holder of a lease records a
result, and pages of due users that another run takes from."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from emailsync.config.settings import SyncConfig
from emailsync.model import Result
from emailsync.store.leases import DuePages, Leases, failure_backoff
from tests.conftest import AppDb, leases_by_run

SYNC = SyncConfig(3600, 100, 50, 10, 600, 5, "host", 300, 86400, 20, 3)


@pytest.mark.parametrize(("failures", "ceiling"), [(0, 300), (1, 600), (3, 2400), (9, 86400), (500, 86400)])
def test_failure_backoff_doubles_up_to_its_cap_with_jitter_below_the_ceiling(failures: int, ceiling: float) -> None:
    waits = [failure_backoff(SYNC, failures) for _ in range(200)]

    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
    assert max(waits) - min(waits) > 0


@pytest.fixture
def store_of(app_db: AppDb) -> Iterator[Callable[[str], Leases]]:
    yield from leases_by_run(app_db.url)


@pytest.mark.parametrize("ok", [True, False], ids=["synced", "failed"])
def test_only_the_lease_holder_can_record_a_result(ok: bool, app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(1)
    mine = store_of("run-a")
    [claim] = mine.claim(mine.next_page(10))
    app_db.execute("UPDATE email_sync_user_state SET lease_owner = 'run-b'")  # our lease expired and was taken

    mine.record([Result(claim, ok=ok, duration_ms=5, error=None if ok else "HTTP 500")])

    assert app_db.last_syncs()[1] is None
    assert (app_db.state(1).lease_owner, app_db.state(1).failures, app_db.state(1).last_error) == ("run-b", 0, None)


def test_a_batch_of_the_largest_configurable_size_is_recorded(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10_000)  # sync.batch_size's maximum
    store = store_of("run-a")
    claims = store.claim(store.next_page(10_000))

    store.record([Result(claim, ok=False, duration_ms=5, error="HTTP 500") for claim in claims])

    assert len(claims) == 10_000
    assert app_db.rows("SELECT count(*) FROM email_sync_user_state WHERE failures = 1")[0][0] == 10_000


def test_users_another_run_took_from_our_page_are_skipped(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10)
    ours, theirs = DuePages(store_of("run-a"), 1000), store_of("run-b")
    first = ours.claim(2)  # reads the page of all 10
    taken = theirs.claim(theirs.next_page(5))

    rest = ours.claim(10)

    assert len(first) == 2 and len(taken) == 5 and len(rest) == 3
    assert {c.key for c in first + rest}.isdisjoint(c.key for c in taken)


def test_a_run_is_done_when_another_run_took_everyone_left(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10)
    ours, theirs = DuePages(store_of("run-a"), 5), store_of("run-b")
    assert len(ours.claim(1)) == 1  # our page: the 5 oldest
    theirs.claim(theirs.next_page(1000))  # the other run takes all 9 left, our page's 4 among them

    assert ours.claim(5) == [] and ours.done
