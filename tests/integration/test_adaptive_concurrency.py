"""backend.concurrency = "auto" finds the backend's capacity: whole `email-sync run` processes against PostgreSQL and
a stand-in whose latency is flat up to 40 calls in flight, climbs steeply beyond and answers 503 beyond 60
(harness/backend.py's Overload). The best fixed setting is 40 by construction (32 runs too, should the machine
disagree); auto is measured against it in the same
test, on the same machine at the same time, so only the ratio counts."""

from __future__ import annotations

import signal
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emailsync.store import db
from emailsync.sync import limiter
from harness.backend import Backend, Behaviour, Overload
from tests.conftest import AppDb, EmailSync

USERS = 3000  # ~11 s at the best fixed setting: 40 in flight, 150 ms each
CAPACITY = Overload(base=0.15, knee=40, refuse=60)


@dataclass(frozen=True)
class Run:
    """One whole run: its throughput by its own row, the limits it logged, and what the stand-in saw."""

    users_per_s: float
    limits: list[int]
    settled: int
    calls: int
    refused: int


def run_with(pg: AppDb, email_sync: EmailSync, concurrency: Any) -> Run:
    """Every user due again, then one `email-sync run` against a fresh stand-in with the capacity."""
    pg.execute("UPDATE users SET last_sync = NULL")
    pg.execute(f"DELETE FROM {db.STATE}")
    with Backend(overload=CAPACITY) as backend:
        email_sync.configure(
            pg, backend, backend={"concurrency": concurrency, "max_concurrency": 128}, logging={"level": "info"}
        )
        result = email_sync.subprocess("run", timeout=120)
    assert result.code == 0, result.stderr
    synced, seconds = pg.rows(
        f"SELECT synced, extract(epoch FROM finished_at - started_at) FROM {db.RUNS} ORDER BY started_at DESC LIMIT 1"
    )[0]
    assert synced == USERS
    return Run(
        users_per_s=synced / float(seconds),
        limits=[e["limit"] for e in result.events if e["event"] == "concurrency_changed"],
        settled=result.event("cycle_finished")["concurrency_limit"],
        calls=len(backend.sync_calls()),
        refused=backend.refused,
    )


def test_auto_settles_at_the_backends_capacity_near_the_best_fixed_setting(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(USERS)

    best = max(run_with(pg, email_sync, 40), run_with(pg, email_sync, 32), key=lambda run: run.users_per_s)
    auto = run_with(pg, email_sync, "auto")

    steady = auto.limits[len(auto.limits) // 2 :]  # past slow start and the first cuts
    assert steady and 30 <= statistics.median(steady) <= 50, auto.limits
    assert 30 <= auto.settled <= 50
    assert auto.refused < 0.02 * auto.calls, f"{auto.refused} of {auto.calls} calls got 503"
    assert auto.users_per_s >= 0.85 * best.users_per_s, f"{auto.users_per_s:.0f}/s against {best.users_per_s:.0f}/s"


@pytest.mark.parametrize(("concurrency", "limit"), [(4, 4), ("auto", limiter.INITIAL)], ids=["fixed", "auto"])
def test_the_limit_at_the_end_of_the_run_is_logged_and_in_the_metrics(
    concurrency: Any, limit: int, pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    pg.add_users(5)  # fewer answers than one round: auto keeps the limit it starts with
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, backend={"concurrency": concurrency}, metrics={"textfile": str(textfile)})

    result = email_sync("run")

    assert result.event("cycle_finished")["concurrency_limit"] == limit
    gauges = {
        sample.name: sample.value
        for family in text_string_to_metric_families(textfile.read_text())
        for sample in family.samples
    }
    assert gauges["email_sync_concurrency_limit"] == limit


def test_sigterm_releases_the_users_whose_calls_wait_at_the_gate(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(40)
    backend.set_default(Behaviour(delay=1.0))
    email_sync.configure(pg, backend, backend={"concurrency": "auto"}, sync={"shutdown_grace": "10s"})
    process = email_sync.popen("run")
    assert backend.wait_for_sync_calls(limiter.INITIAL, timeout=30)

    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)

    assert process.returncode == 0, stdout
    called = {call.user_id for call in backend.sync_calls()}
    assert len(called) == limiter.INITIAL, "the gate let no call in past the limit, nor any after the signal"
    assert pg.synced_ids() == called
    assert pg.leased() == []
    [run] = pg.runs()
    assert (run.outcome, run.synced) == ("interrupted", limiter.INITIAL)
    assert run.skipped > 0, "claims held at the gate were released, not failed"
