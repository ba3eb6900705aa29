"""Freshness and monitoring pings: the promise "every user synced within status.max_staleness", what `status` and
the metrics say of it, and the pings a run sends to a Healthchecks-compatible (or Uptime Kuma, or ntfy) monitor.
The monitor is a real HTTP server (harness/backend.py's monitoring path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emailsync.errors import EXIT_CONFIG, EXIT_NO, EXIT_OK, EXIT_TEMPFAIL
from harness.backend import Backend, Behaviour, Recorded
from tests.conftest import AppDb, EmailSync

KEY = "5f0c8a1e-3b7d-4c2a-9e61-d0b4a7c3f218"  # the check's UUID: whoever knows it can ping in our name


@pytest.fixture
def monitor() -> Iterator[Backend]:
    with Backend() as server:
        yield server


def ping_url(monitor: Backend, query: str = "") -> str:
    return f"{monitor.base_url}/ping/{KEY}{query}"


def where(ping: Recorded) -> tuple[str, str]:
    """(method, path after the key) of a ping: ("POST", "/start"), ("POST", "") for success, ("POST", "/fail")."""
    return ping.method, urlsplit(ping.path).path.removeprefix(f"/ping/{KEY}")


def query(ping: Recorded) -> dict[str, list[str]]:
    return parse_qs(urlsplit(ping.path).query, keep_blank_values=True)


def test_a_run_pings_start_then_success_with_its_counts_and_run_id(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor, "?source=prod")})

    result = email_sync("run")

    assert result.code == EXIT_OK
    run_id = result.event("cycle_started")["run_id"]
    start, end = monitor.pings()
    assert (where(start), where(end)) == (("POST", "/start"), ("POST", ""))
    for ping in (start, end):
        assert query(ping) == {"source": ["prod"], "rid": [run_id]}  # the operator's query string is kept
    assert end.json is not None
    assert {k: end.json[k] for k in ("outcome", "due", "synced", "failed", "skipped")} == {
        "outcome": "ok",
        "due": 3,
        "synced": 3,
        "failed": 0,
        "skipped": 0,
    }
    assert end.json["freshness_ok"] is True and end.json["users_over_max_staleness"] == 0
    assert isinstance(end.json["duration_ms"], int)
    assert [e["ping"] for e in result.events if e["event"] == "ping_sent"] == ["start", "success"]


def test_no_ping_without_a_ping_url(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)

    result = email_sync("run")

    assert result.code == EXIT_OK
    assert backend.pings() == [] and not [e for e in result.events if e["event"].startswith("ping_")]


def test_a_user_not_synced_within_max_staleness_makes_a_good_run_ping_fail(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1, age=2 * 3600)  # due for an hour already, and its sync fails: its mail is 2 h stale
    pg.add_users(2, age=3 * 3600, start=2)
    backend.script(1, Behaviour(status=422))
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)}, status={"max_staleness": "90min"})

    result = email_sync("run")

    assert result.code == EXIT_OK  # the run itself went as it should
    end = monitor.pings()[-1]
    assert where(end) == ("POST", "/fail")
    assert end.json is not None
    assert (end.json["outcome"], end.json["synced"], end.json["failed"]) == ("ok", 2, 1)
    assert (end.json["freshness_ok"], end.json["users_over_max_staleness"]) == (False, 1)
    assert 2 * 3600 - 60 < end.json["oldest_sync_age_s"] < 2 * 3600 + 60


def test_never_synced_users_do_not_break_the_promise(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    backend.set_default(Behaviour(status=422))
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)})

    assert email_sync("run").code == EXIT_OK

    end = monitor.pings()[-1]
    assert where(end) == ("POST", "")
    assert end.json is not None and end.json["failed"] == 2 and end.json["freshness_ok"] is True


def test_parked_users_do_not_break_the_promise(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1, age=3 * 3600)
    pg.add_users(1, start=2)
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)}, status={"max_staleness": "90min"})
    assert email_sync("park", "1", "--reason", "mailbox being migrated").code == EXIT_OK

    assert email_sync("run").code == EXIT_OK

    end = monitor.pings()[-1]
    assert where(end) == ("POST", "")
    assert end.json is not None and end.json["users_over_max_staleness"] == 0


def test_a_failed_run_pings_fail(pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    backend.health_status = 503
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)})

    assert email_sync("run").code == EXIT_TEMPFAIL

    assert [where(ping) for ping in monitor.pings()] == [("POST", "/start"), ("POST", "/fail")]
    assert monitor.pings()[-1].json["outcome"] == "backend_unavailable"  # type: ignore[index]


def test_a_run_that_cannot_reach_the_database_still_pings_fail(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(
        pg,
        backend,
        database={"url": "postgresql://postgres@127.0.0.1:9/app", "connect_timeout": "1s"},
        monitor={"ping_url": ping_url(monitor)},
    )

    result = email_sync("run")

    assert result.code == EXIT_TEMPFAIL
    [end] = monitor.pings()  # no run row was written, so no /start: the failure all the same
    assert where(end) == ("POST", "/fail")
    assert end.json is not None
    assert end.json["outcome"] == "database_unavailable" and end.json["users_over_max_staleness"] is None


def test_a_monitor_that_is_down_changes_nothing_but_a_warning(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    email_sync.configure(pg, backend, monitor={"ping_url": f"http://127.0.0.1:9/ping/{KEY}"})

    result = email_sync("run")

    assert result.code == EXIT_OK and pg.synced_ids() == {1, 2}
    failed = [e for e in result.events if e["event"] == "ping_failed"]
    assert [(e["ping"], e["host"], e["level"]) for e in failed] == [
        ("start", "127.0.0.1", "warning"),
        ("success", "127.0.0.1", "warning"),
    ]
    assert KEY not in result.stdout + result.stderr


def test_a_monitor_answering_an_error_is_retried_once_then_logged(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    monitor.monitor_status = 500
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)})

    result = email_sync("run")

    assert result.code == EXIT_OK
    assert [where(ping) for ping in monitor.pings()] == [("POST", "/start")] * 2 + [("POST", "")] * 2
    assert [e["error"] for e in result.events if e["event"] == "ping_failed"] == ["HTTP 500", "HTTP 500"]


def test_the_run_does_not_wait_for_a_slow_start_ping(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    monitor.monitor_delay = 2.0
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor)})

    assert email_sync("run").code == EXIT_OK

    start, end = monitor.pings()
    assert max(call.at for call in backend.sync_calls()) < start.at + monitor.monitor_delay  # while it waited
    assert end.at >= start.at + monitor.monitor_delay  # and the end ping came after the start's answer


def test_a_monitor_slower_than_ping_timeout_is_given_up(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    monitor.monitor_delay = 5.0
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor), "ping_timeout": "1s"})

    result = email_sync("run")

    assert result.code == EXIT_OK and pg.synced_ids() == {1}
    assert [e["ping"] for e in result.events if e["event"] == "ping_failed"] == ["start", "success"]


def test_a_monitor_trickling_its_answer_does_not_hold_the_run(
    pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    """A ping needs the answer's status only: a body that never ends (a byte every 0.2 s, each within the read
    timeout) is not waited for."""
    pg.add_users(1)
    monitor.monitor_trickle = 0.2
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor), "ping_timeout": "5s"})

    result = email_sync("run")

    assert result.code == EXIT_OK and pg.synced_ids() == {1}
    assert [where(ping) for ping in monitor.pings()] == [("POST", "/start"), ("POST", "")]
    assert [e for e in result.events if e["event"] == "ping_failed"] == []


def test_the_ping_urls_key_never_reaches_the_log_or_the_runs_table(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.health_status = 503  # a failed run: its error goes into the runs table and the log
    url = f"http://127.0.0.1:9/ping/{KEY}"
    email_sync.configure(pg, backend, monitor={"ping_url": url})

    result = email_sync.subprocess("run")  # the output the journal gets

    assert result.code == EXIT_TEMPFAIL
    assert "ping_failed" in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert all(KEY not in str(tuple(run)) for run in pg.runs())


def test_a_ping_url_that_is_not_valid_is_refused_without_showing_it(pg: AppDb, email_sync: EmailSync) -> None:
    email_sync.configure(pg, None, monitor={"ping_url": f"ftp://hc-ping.com/{KEY}"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "monitor.ping_url")
    assert KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(("failing", "status"), [(False, "up"), (True, "down")])
def test_uptime_kuma_gets_one_get_with_up_or_down(
    failing: bool, status: str, pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.health_status = 503 if failing else 200
    push_url = ping_url(monitor, "?status=up&msg=OK&ping=")  # as Uptime Kuma shows it, to paste
    email_sync.configure(pg, backend, monitor={"ping_url": push_url, "ping_style": "uptime-kuma"})

    email_sync("run")

    [push] = monitor.pings()
    assert where(push) == ("GET", "")
    sent = query(push)
    assert sent["status"] == [status] and sent["ping"][0].isdigit()
    assert ("FAILED" in sent["msg"][0]) is failing


@pytest.mark.parametrize(
    ("failing", "priority", "tags"), [(False, "min", "white_check_mark"), (True, "high", "warning")]
)
def test_ntfy_gets_one_message_silent_when_all_is_well(
    failing: bool, priority: str, tags: str, pg: AppDb, backend: Backend, monitor: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(1)
    backend.health_status = 503 if failing else 200
    email_sync.configure(pg, backend, monitor={"ping_url": ping_url(monitor), "ping_style": "ntfy"})

    email_sync("run")

    [message] = monitor.pings()
    assert where(message) == ("POST", "")
    assert (message.header("Priority"), message.header("Tags")) == (priority, tags)
    assert b"synced" in message.body and (b"FAILED" in message.body) is failing


def _stale_user(pg: AppDb, backend: Backend, email_sync: EmailSync, **sections: dict[str, Any]) -> None:
    """Three users synced by a run, one of them failing for 2 h now (in backoff): over a max_staleness of 90 min."""
    pg.add_users(1, age=2 * 3600)
    pg.add_users(2, start=2)
    backend.script(1, Behaviour(status=422))
    email_sync.configure(pg, backend, status={"max_staleness": "90min"}, **sections)
    assert email_sync("run").code == EXIT_OK


def test_status_exits_2_naming_the_users_over_max_staleness(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    _stale_user(pg, backend, email_sync)

    result = email_sync("status")

    assert result.code == EXIT_NO
    problem = next(line for line in result.stdout.splitlines() if "max_staleness" in line)
    assert problem.startswith("  ! 1 users not synced within status.max_staleness (5400s)") and "2h0" in problem


def test_status_json_carries_the_freshness(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    _stale_user(pg, backend, email_sync)

    report = json.loads(email_sync("status", "--json").stdout)

    assert report["healthy"] is False
    fresh = report["freshness"]
    assert (fresh["max_staleness_s"], fresh["over"]) == (5400, 1)
    assert 2 * 3600 - 60 < fresh["oldest_sync_age_s"] < 2 * 3600 + 60


def test_status_is_healthy_when_everyone_is_fresh(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(2, age=2 * 3600)
    email_sync.configure(pg, backend, status={"max_staleness": "90min"})
    assert email_sync("run").code == EXIT_OK

    result = email_sync("status")

    assert result.code == EXIT_OK, result.stdout
    assert "freshness: holds, 0 over 90m" in result.stdout


def test_max_staleness_defaults_to_the_interval_plus_the_missed_timer_intervals(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(pg, backend, sync={"interval": "30min"}, status={"timer_interval": "1min"})

    report = json.loads(email_sync("status", "--json").stdout)

    assert report["freshness"]["max_staleness_s"] == 1800 + 3 * 60


def test_metrics_carry_the_freshness_gauges(pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    textfile = tmp_path / "email_sync.prom"
    _stale_user(pg, backend, email_sync, metrics={"textfile": str(textfile)})

    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(textfile.read_text())
        for sample in family.samples
    }
    assert samples["email_sync_freshness_ok"] == 0
    assert samples["email_sync_users_over_max_staleness"] == 1
    assert samples["email_sync_max_staleness_seconds"] == 5400
    assert 2 * 3600 - 60 < samples["email_sync_oldest_sync_age_seconds"] < 2 * 3600 + 60
