"""The metrics textfile: written by prometheus_client at each run's start and end, every series in every file at
full precision, the database's series kept while it is unreachable, and valid by Debian's promtool. The hosts
awaiting an upgrade, proven on SQLite in tests/unit/report/test_metrics.py, run here again on PostgreSQL."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from emailsync import __version__
from emailsync.errors import EXIT_NO, EXIT_OK, EXIT_TEMPFAIL
from emailsync.report import metrics
from emailsync.store import schema
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.unit.report.test_metrics import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    REFUSED,
    Samples,
    awaiting,
    names,
    read,
    test_a_host_older_than_the_schema_is_counted_and_named_as_awaiting_an_upgrade,
    test_the_hosts_awaiting_an_upgrade_keep_their_last_values_while_the_database_is_unreachable,
    value,
)

# Every series but those whose label values only the database's rows give (none when it has none).
EVERY_SERIES = {s.name for s in metrics.SERIES} - {
    "email_sync_runs_total",
    "email_sync_last_run_outcome",
    "email_sync_host_awaiting_upgrade",
}


def test_metrics_textfile_is_written_after_each_run(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(4)
    pg.add_users(1, age=7200, start=10)
    backend.script(2, Behaviour(status=400))
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)}, sync={"max_users_per_run": 4})

    assert email_sync("run").code == EXIT_OK

    samples = read(textfile)
    assert value(samples, "email_sync_last_run_success") == 1
    assert value(samples, "email_sync_last_run_outcome", outcome="ok") == 1
    assert value(samples, "email_sync_last_run_users", outcome="synced") == 3
    assert value(samples, "email_sync_last_run_users", outcome="failed") == 1
    assert value(samples, "email_sync_last_run_users", outcome="skipped") == 0
    assert value(samples, "email_sync_last_run_due_users") == 5
    assert value(samples, "email_sync_users_due") == 1
    assert 7100 < value(samples, "email_sync_backlog_oldest_seconds") < 7400
    assert value(samples, "email_sync_users_in_backoff") == 1
    assert value(samples, "email_sync_database_up") == 1
    assert value(samples, "email_sync_run_in_progress") == 0
    assert value(samples, "email_sync_hosts_awaiting_upgrade") == 0 and awaiting(samples) == {}
    assert value(samples, "email_sync_build_info", version=__version__, schema=str(schema.SCHEMA_VERSION)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("email_sync.prom.")] == []


def test_timestamps_are_written_at_full_precision(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(2)
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)})

    before = time.time()
    assert email_sync("run").code == EXIT_OK
    after = time.time()

    samples = read(textfile)
    started = value(samples, "email_sync_run_started_timestamp_seconds")
    ended = value(samples, "email_sync_last_run_timestamp_seconds")
    assert before <= started <= ended <= after
    assert before <= value(samples, "email_sync_last_success_timestamp_seconds") <= after
    assert before <= value(samples, "email_sync_database_read_timestamp_seconds") <= after
    assert ended != round(ended), "fractions of a second are kept"


def test_a_run_in_progress_is_marked_from_its_start(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(4)
    backend.set_default(Behaviour(delay=1.0))
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)}, backend={"concurrency": 1})
    run = email_sync.popen("run")
    assert backend.wait_for_sync_calls(1, timeout=30)

    during = read(textfile)
    run.communicate(timeout=60)
    after = read(textfile)

    assert value(during, "email_sync_run_in_progress") == 1
    assert names(during) >= EVERY_SERIES
    assert value(after, "email_sync_run_in_progress") == 0
    marked = value(during, "email_sync_run_started_timestamp_seconds")
    started = value(after, "email_sync_run_started_timestamp_seconds")  # the run's own start, before the mark
    assert started <= marked < value(after, "email_sync_last_run_timestamp_seconds")


def test_the_series_stay_with_their_last_values_while_the_database_is_unreachable(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(3, age=2 * 3600)
    backend.script(1, Behaviour(status=400))
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)}, status={"max_staleness": "90min"})
    assert email_sync("run").code == EXIT_OK
    known = read(textfile)

    email_sync.configure(
        pg, backend, metrics={"textfile": str(textfile)}, status={"max_staleness": "90min"}, database={"url": REFUSED}
    )
    assert email_sync("run").code == EXIT_TEMPFAIL

    samples = read(textfile)
    assert names(samples) >= EVERY_SERIES
    assert value(samples, "email_sync_database_up") == 0
    assert value(samples, "email_sync_last_run_success") == 0
    assert value(samples, "email_sync_last_run_outcome", outcome="database_unavailable") == 1
    assert value(known, "email_sync_freshness_ok") == 0
    for name in (
        "email_sync_freshness_ok",
        "email_sync_users_over_max_staleness",
        "email_sync_users_in_backoff",
        "email_sync_users_due",
        "email_sync_last_success_timestamp_seconds",
        "email_sync_database_read_timestamp_seconds",
    ):
        assert value(samples, name) == value(known, name), name
    assert value(samples, "email_sync_user_syncs_total", outcome="synced") == 2
    assert value(samples, "email_sync_fleet_mode", mode="running") == 1


def test_without_an_earlier_file_an_unreachable_database_gives_nan_not_a_gap(
    pg: AppDb, email_sync: EmailSync, tmp_path: Path
) -> None:
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, None, metrics={"textfile": str(textfile)}, database={"url": REFUSED})

    assert email_sync("run").code == EXIT_TEMPFAIL

    samples = read(textfile)
    assert names(samples) >= EVERY_SERIES
    assert value(samples, "email_sync_database_up") == 0
    assert math.isnan(value(samples, "email_sync_freshness_ok"))
    assert math.isnan(value(samples, "email_sync_fleet_mode", mode="paused"))
    assert math.isnan(value(samples, "email_sync_last_success_timestamp_seconds"))


def test_a_paused_run_is_told_apart_from_a_healthy_one(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(2)
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)})
    before = time.time()
    assert email_sync("pause", "--reason", "backend maintenance").code == EXIT_OK

    assert email_sync("run").code == EXIT_OK

    samples = read(textfile)
    assert value(samples, "email_sync_last_run_outcome", outcome="paused") == 1
    assert value(samples, "email_sync_fleet_mode", mode="paused") == 1
    assert value(samples, "email_sync_fleet_mode", mode="running") == 0
    assert value(samples, "email_sync_fleet_mode", mode="draining") == 0
    assert before - 1 <= value(samples, "email_sync_fleet_mode_changed_timestamp_seconds") <= time.time() + 1
    assert math.isnan(value(samples, "email_sync_last_success_timestamp_seconds")), "a paused run is no success"
    assert value(samples, "email_sync_users_due") == 2


def test_the_totals_count_this_hosts_runs_from_the_runs_table(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(3)
    backend.script(3, Behaviour(status=400))
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)}, sync={"host_id": "host-a"})
    assert email_sync("run").code == EXIT_OK
    pg.add_users(2, start=10)
    pg.execute(
        "INSERT INTO email_sync_runs (id, host, pid, started_at, finished_at, outcome, synced) "
        f"VALUES ('elsewhere', 'host-b', 1, {pg.at(-60)}, {pg.at(-50)}, 'ok', 100)"
    )

    assert email_sync("run").code == EXIT_OK

    samples = read(textfile)
    assert value(samples, "email_sync_user_syncs_total", outcome="synced") == 4
    assert value(samples, "email_sync_user_syncs_total", outcome="failed") == 1
    assert value(samples, "email_sync_runs_total", outcome="ok") == 2


def test_every_host_exports_the_hosts_awaiting_an_upgrade_and_an_upgraded_one_drops_out(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    for host in ("old-host", "new-host"):
        pg.execute(
            "INSERT INTO email_sync_runs (id, host, pid, release, started_at, finished_at, outcome) "
            f"VALUES ('{host}-run', '{host}', 1, '0.1.9', {pg.at(-60)}, {pg.at(-59)}, 'stood_aside')"
        )
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)}, sync={"host_id": "new-host"})

    assert email_sync("run").code == EXIT_OK  # new-host, upgraded: this release knows the schema

    samples = read(textfile)
    assert value(samples, "email_sync_hosts_awaiting_upgrade") == 1
    assert awaiting(samples) == {("old-host", "0.1.9"): 1}


def test_metrics_record_a_failed_run(pg: AppDb, email_sync: EmailSync, tmp_path: Path) -> None:
    textfile = tmp_path / "email_sync.prom"
    pg.add_users(1)
    with Backend(sync_path="/elsewhere") as backend:
        email_sync.configure(pg, backend, metrics={"textfile": str(textfile)})
        email_sync("run")

    samples = read(textfile)
    assert value(samples, "email_sync_last_run_success") == 0
    assert value(samples, "email_sync_last_run_outcome", outcome="endpoint_misconfigured") == 1


def test_a_metrics_file_that_cannot_be_written_is_a_warning_not_a_crash(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(1)
    with Backend() as backend:
        email_sync.configure(pg, backend, metrics={"textfile": "/nonexistent-directory/email_sync.prom"})
        result = email_sync("run")

    assert result.code == 0, result.stdout
    warnings = [e for e in result.events if e["event"] == "metrics_not_written"]
    assert len(warnings) == 2, "at the start and at the end"
    assert all("nonexistent-directory" in w["error"] for w in warnings)
    assert pg.synced_ids() == {1}


def test_promtool_finds_the_written_file_valid(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    pg.add_users(3)
    backend.script(2, Behaviour(status=400))
    textfile = tmp_path / "email_sync.prom"
    email_sync.configure(pg, backend, metrics={"textfile": str(textfile)})
    assert email_sync("run").code == EXIT_OK

    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=textfile.read_bytes(), capture_output=True, check=False
    )

    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout + checked.stderr == b"", "no lint remark either"


def test_check_tries_writing_beside_the_textfile(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    email_sync.configure(pg, backend, metrics={"textfile": str(tmp_path / "email_sync.prom")})

    result = email_sync("check")

    assert f"✔ metrics: {tmp_path / 'email_sync.prom'} can be written" in result.stdout
    assert list(tmp_path.glob("email_sync.prom*")) == [], "the trial leaves nothing behind"


def test_check_fails_on_a_textfile_that_cannot_be_written(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend, metrics={"textfile": "/nonexistent-directory/email_sync.prom"})

    result = email_sync("check")

    assert result.code == EXIT_NO
    assert "✘ metrics: /nonexistent-directory/email_sync.prom cannot be written" in result.stdout
    assert "fix: create the directory" in result.stdout
