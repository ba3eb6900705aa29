"""backend.max_rate is the budget of the whole fleet: several concurrent `email-sync run` processes (distinct host
ids) against one PostgreSQL share it, and a Retry-After seen by one host holds the calls of all of them. Every
assertion is on the stand-in backend's own record of when each call arrived. tests/unit/sync/test_budget.py's tests
run here again on PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter

from harness.backend import Backend, Behaviour, Recorded
from tests.conftest import AppDb, EmailSync
from tests.integration.test_hosts import assert_each_synced_once, run_hosts
from tests.unit.sync.test_budget import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    test_a_cooldown_is_one_warning_however_many_calls_in_flight_were_told_to_wait,
    test_a_fleet_without_max_rate_never_touches_the_budget,
    test_the_budget_spaces_the_calls_on_sqlite_too,
)

BUDGET = 50  # calls per second, for the fleet
HOSTS = ["", "", ""]  # three hosts on the machine's own clock


def calls_per_second(calls: list[Recorded]) -> list[int]:
    """The backend's count of calls in each whole second from the first call on."""
    first = min(call.at for call in calls)
    counts = Counter(int(call.at - first) for call in calls)
    return [counts[second] for second in range(max(counts) + 1)]


def host_of_each_user(outputs: list[str]) -> dict[int, int]:
    """Which host (its index) called the backend for each user, from the hosts' own logs."""
    return {
        event["user_id"]: host
        for host, output in enumerate(outputs)
        for event in map(json.loads, output.splitlines())
        if event["event"] in ("user_synced", "user_failed")
    }


def test_three_hosts_together_stay_within_one_budget_and_use_it(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(450)  # about 9 s at the budget
    email_sync.configure(pg, backend, backend={"concurrency": 4, "max_rate": BUDGET}, logging={"level": "warning"})

    run_hosts(email_sync, HOSTS)

    assert_each_synced_once(pg, backend, 450, hosts=3)
    assert all(run.synced > 0 for run in pg.runs()), "every host took part"
    whole = calls_per_second(backend.sync_calls())[1:-1]  # after the first second, without the last (partial) one
    assert len(whole) >= 6, whole
    assert max(whole) <= BUDGET * 1.10, whole
    assert sum(whole) / len(whole) >= BUDGET * 0.90, whole


def test_a_retry_after_seen_by_one_host_holds_the_calls_of_every_host(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(400)
    backend.on_call(150, Behaviour(status=429, retry_after="2"))
    email_sync.configure(
        pg,
        backend,
        backend={"concurrency": 4, "max_rate": BUDGET, "retry_backoff_max": "5s"},
        logging={"level": "debug"},
    )

    outputs = run_hosts(email_sync, HOSTS)

    calls = sorted(backend.sync_calls(), key=lambda call: call.at)
    refused = [user for user, count in Counter(call.user_id for call in calls).items() if count == 2]
    assert len(refused) == 1, "one call got the 429 and was retried"
    t0 = next(call.at for call in calls if call.user_id == refused[0])
    hosts = host_of_each_user(outputs)
    before = {hosts[call.user_id] for call in calls if t0 - 1 <= call.at < t0}
    during = [call for call in calls if t0 + 0.5 <= call.at < t0 + 2]
    after = {hosts[call.user_id] for call in calls if t0 + 2 <= call.at < t0 + 3}
    assert before == {0, 1, 2}, "all hosts were calling when the 429 came"
    assert during == [], (
        f"{len(during)} calls during the cooldown, from hosts {sorted(hosts[c.user_id] for c in during)}"
    )
    assert after == {0, 1, 2}, "all hosts called again once it was over"
    assert pg.synced_ids() == set(range(1, 401))
