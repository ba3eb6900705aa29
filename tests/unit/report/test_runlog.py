"""A run's per-user lines as a specification: outcomes and a clock in, the lines the journal gets out."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from emailsync.model import Claim, Kind, Outcome, RunCounts
from emailsync.report.runlog import FAILURES_SHOWN, PROGRESS_EVERY, SAMPLES, RunLog
from emailsync.systemd import logs


def outcome(user_id: int, kind: Kind) -> Outcome:
    claim = Claim(user_id, str(user_id), f"user{user_id}@example.com", 0, "", 0)
    status = {Kind.SYNCED: 200, Kind.USER_ERROR: 400, Kind.SERVER_ERROR: 500}.get(kind)
    return Outcome(claim, kind, status, 1, 3, None if kind is Kind.SYNCED else f"HTTP {status}", 0)


class Lines:
    """What the log got, at ``level``."""

    def __init__(self, level: str) -> None:
        self.stream = io.StringIO()
        logs.configure(level=level, stream=self.stream)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [e for e in found if name is None or e["event"] == name]


@pytest.fixture
def info() -> Lines:
    return Lines("info")


def test_a_success_is_a_debug_line_only(info: Lines) -> None:
    run = RunLog(RunCounts(), now=0.0)
    for user in range(1000):
        run.outcome(outcome(user, Kind.SYNCED))

    assert info.events() == []

    debug = Lines("debug")
    run = RunLog(RunCounts(), now=0.0)
    run.outcome(outcome(7, Kind.SYNCED))
    [line] = debug.events()
    assert (line["event"], line["level"], line["user_id"], line["emails_synced"]) == ("user_synced", "debug", 7, 0)


def test_the_first_failures_of_each_kind_are_warnings_the_rest_are_counted_and_sampled(info: Lines) -> None:
    run = RunLog(RunCounts(), now=0.0)
    for user in range(FAILURES_SHOWN + 50):
        run.outcome(outcome(user, Kind.USER_ERROR))
    for user in range(1000, 1003):
        run.outcome(outcome(user, Kind.SERVER_ERROR))
    run.summarize()

    shown = info.events("user_failed")
    assert [e["user_id"] for e in shown] == [*range(FAILURES_SHOWN), 1000, 1001, 1002]
    assert {e["level"] for e in shown} == {"warning"}
    [summary] = info.events("failures_summarized")
    assert summary["level"] == "warning"
    assert summary["failed"] == {"user_error": FAILURES_SHOWN + 50, "server_error": 3}
    assert summary["not_shown"] == {"user_error": 50}
    assert summary["sample_user_ids"] == {"user_error": list(range(FAILURES_SHOWN, FAILURES_SHOWN + SAMPLES))}


def test_failures_beyond_the_cap_are_debug_lines() -> None:
    debug = Lines("debug")
    run = RunLog(RunCounts(), now=0.0)
    for user in range(FAILURES_SHOWN + 1):
        run.outcome(outcome(user, Kind.TRANSPORT))

    last = debug.events("user_failed")[-1]
    assert (last["user_id"], last["level"], last["kind"]) == (FAILURES_SHOWN, "debug", "transport")


def test_no_summary_when_every_failure_was_shown(info: Lines) -> None:
    run = RunLog(RunCounts(), now=0.0)
    run.outcome(outcome(1, Kind.USER_ERROR))
    run.summarize()

    assert info.events("failures_summarized") == []


def test_a_progress_line_every_interval_with_the_counts_so_far(info: Lines) -> None:
    counts = RunCounts(due=500)
    run = RunLog(counts, now=100.0)
    run.tick(100.0 + PROGRESS_EVERY - 0.1, in_flight=8)
    assert info.events() == []

    counts.synced, counts.failed, counts.skipped = 290, 7, 3
    run.tick(100.0 + PROGRESS_EVERY, in_flight=8)
    run.tick(100.0 + PROGRESS_EVERY + 1, in_flight=8)  # too soon for another
    [progress] = info.events("progress")
    assert progress["level"] == "info"
    assert (progress["due"], progress["synced"], progress["failed"], progress["skipped"]) == (500, 290, 7, 3)
    assert progress["in_flight"] == 8 and progress["elapsed_s"] == PROGRESS_EVERY
    assert progress["users_per_s"] == round(300 / PROGRESS_EVERY, 1)

    run.tick(100.0 + 2 * PROGRESS_EVERY, in_flight=0)
    assert len(info.events("progress")) == 2


def test_a_progress_line_brings_a_summary_only_when_failures_went_unshown_since_the_last(info: Lines) -> None:
    run = RunLog(RunCounts(), now=0.0)
    for user in range(FAILURES_SHOWN + 1):
        run.outcome(outcome(user, Kind.USER_ERROR))
    run.tick(PROGRESS_EVERY, in_flight=0)
    run.tick(2 * PROGRESS_EVERY, in_flight=0)  # nothing new unshown
    run.outcome(outcome(5000, Kind.USER_ERROR))
    run.summarize()  # the run's end

    summaries = info.events("failures_summarized")
    assert [s["not_shown"] for s in summaries] == [{"user_error": 1}, {"user_error": 2}]
    assert [e["event"] for e in info.events() if e["event"] != "user_failed"] == [
        "progress",
        "failures_summarized",
        "progress",
        "failures_summarized",
    ]


def test_a_bugs_traceback_is_an_error_line_even_past_the_cap(info: Lines) -> None:
    run = RunLog(RunCounts(), now=0.0)
    for user in range(FAILURES_SHOWN):
        run.outcome(outcome(user, Kind.INTERNAL))
    try:
        raise KeyError("oops")
    except KeyError as bug:
        run.outcome(Outcome(outcome(999, Kind.INTERNAL).claim, Kind.INTERNAL, None, 1, 3, "internal error", bug=bug))

    last = info.events("user_failed")[-1]
    assert (last["user_id"], last["level"]) == (999, "error") and "KeyError" in last["exception"]
