"""The failure streak's rules: which outcome sends what. Pure functions of the previous state and an outcome, played
as systemd plays them: every run records its own outcome at its end (``run``), and after a failed run the OnFailure
handler records what the run could not and sends the alert when it is due (``handler``). The state file, kept by
processes that record at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest

from emailsync.report import streak
from emailsync.report.streak import Alert, Kind, Outcome, Resolved, State

AFTER = 3
START = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


class Timeline:
    """Runs five minutes apart, each with its invocation id; the messages each step would send."""

    def __init__(self) -> None:
        self.state = State()
        self.sent: list[Alert | Resolved] = []
        self._ids = count(1)
        self.at = START

    def _next(self) -> str:
        self.at += timedelta(minutes=5)
        return f"invocation-{next(self._ids)}"

    def run(self, kind: Kind, error: str = "", *, configuration: bool = False, stale: bool = False) -> str:
        """A run that records its own outcome; a failed one is then handled as systemd's OnFailure= would."""
        invocation = self._next()
        outcome = Outcome(kind, self.at, invocation, error, configuration=configuration, stale=stale)
        self.state, resolved = streak.after_run(self.state, outcome)
        if resolved is not None:
            self.sent.append(resolved)
        if kind is Kind.FAILURE:
            self.handler(invocation, "what systemd says")
        return invocation

    def killed(self, result: str = "watchdog", *, configuration: bool = False) -> None:
        """A run that ended before it could record anything (watchdog, SIGKILL, a config error at start-up)."""
        self.handler(self._next(), result, configuration=configuration)

    def handler(self, invocation: str, error: str, *, configuration: bool = False) -> None:
        failure = Outcome(Kind.FAILURE, self.at, invocation, error, configuration=configuration)
        self.state, alert = streak.after_failed_unit(self.state, failure, AFTER)
        if alert is not None:
            self.sent.append(alert)
            self.state = streak.alerted(self.state, self.at)


def test_temporary_failures_alert_once_at_the_after_th_failed_run() -> None:
    timeline = Timeline()
    for _ in range(AFTER - 1):
        timeline.run(Kind.FAILURE, "backend_unavailable: 503")
    assert timeline.sent == []

    timeline.run(Kind.FAILURE, "backend_unavailable: 503")

    [alert] = timeline.sent
    assert isinstance(alert, Alert) and alert.streak.runs == AFTER


def test_nothing_more_is_sent_while_the_streak_lasts() -> None:
    timeline = Timeline()
    for _ in range(24):  # two hours of a backend outage
        timeline.run(Kind.FAILURE, "backend_unavailable: 503")

    assert [type(message) for message in timeline.sent] == [Alert]
    assert timeline.state.streak is not None and timeline.state.streak.runs == 24


def test_a_configuration_error_alerts_at_its_first_run() -> None:
    timeline = Timeline()

    timeline.run(Kind.FAILURE, "endpoint_misconfigured: 401", configuration=True)

    [alert] = timeline.sent
    assert isinstance(alert, Alert) and (alert.streak.runs, alert.streak.configuration) == (1, True)


def test_a_configuration_error_before_the_run_began_alerts_at_once_from_the_handler() -> None:
    timeline = Timeline()

    timeline.killed("config_invalid: backend.base_url is required", configuration=True)

    [alert] = timeline.sent
    assert alert.streak.first_error == "config_invalid: backend.base_url is required"


def test_a_configuration_error_in_a_streak_not_yet_alerted_alerts_at_once() -> None:
    timeline = Timeline()
    timeline.run(Kind.FAILURE, "database_unavailable: refused")

    timeline.run(Kind.FAILURE, "schema_invalid: run email-sync migrate", configuration=True)

    [alert] = timeline.sent
    assert (alert.streak.runs, alert.streak.first_error) == (2, "database_unavailable: refused")
    assert alert.streak.last_error == "schema_invalid: run email-sync migrate"


def test_a_broken_freshness_promise_alerts_before_after_runs() -> None:
    timeline = Timeline()

    timeline.run(Kind.FAILURE, "circuit_open: 20 calls in a row failed", stale=True)

    [alert] = timeline.sent
    assert (alert.streak.runs, alert.streak.stale) == (1, True)


def test_a_success_after_the_alert_sends_one_resolved_with_the_streaks_length_and_first_error() -> None:
    timeline = Timeline()
    timeline.run(Kind.FAILURE, "database_unavailable: refused")
    for _ in range(4):
        timeline.run(Kind.FAILURE, "backend_unavailable: 503")

    timeline.run(Kind.SUCCESS)
    timeline.run(Kind.SUCCESS)

    alert, resolved = timeline.sent
    assert isinstance(alert, Alert) and isinstance(resolved, Resolved)
    assert (resolved.streak.runs, resolved.streak.first_error) == (5, "database_unavailable: refused")
    assert resolved.duration_s == timedelta(minutes=25).total_seconds()  # end of the first failed run to the success
    assert timeline.state == State()


def test_a_streak_shorter_than_after_ends_in_silence() -> None:
    timeline = Timeline()
    for _ in range(AFTER - 1):
        timeline.run(Kind.FAILURE, "backend_unavailable: 503")

    timeline.run(Kind.SUCCESS)

    assert timeline.sent == [] and timeline.state == State()


def test_the_next_streak_alerts_again() -> None:
    timeline = Timeline()
    timeline.run(Kind.FAILURE, "endpoint_misconfigured: 401", configuration=True)
    timeline.run(Kind.SUCCESS)

    timeline.run(Kind.FAILURE, "endpoint_misconfigured: 404", configuration=True)

    assert [type(message) for message in timeline.sent] == [Alert, Resolved, Alert]
    assert timeline.sent[2].streak.first_error == "endpoint_misconfigured: 404"


def test_a_failure_the_run_recorded_is_not_counted_again_by_the_handler() -> None:
    timeline = Timeline()

    timeline.run(Kind.FAILURE, "backend_unavailable: 503")

    assert timeline.state.streak is not None
    assert (timeline.state.streak.runs, timeline.state.streak.first_error) == (1, "backend_unavailable: 503")


def test_the_handler_started_twice_for_one_run_counts_it_once() -> None:
    timeline = Timeline()
    timeline.killed()
    invocation = timeline.state.recorded
    assert invocation is not None

    timeline.handler(invocation, "watchdog")

    assert timeline.state.streak is not None and timeline.state.streak.runs == 1


def test_watchdog_kills_the_run_could_not_record_count_toward_the_alert() -> None:
    timeline = Timeline()
    timeline.run(Kind.FAILURE, "backend_unavailable: 503")
    timeline.killed("watchdog (systemd: killed ABRT)")
    assert timeline.sent == []

    timeline.killed("watchdog (systemd: killed ABRT)")

    [alert] = timeline.sent
    assert (alert.streak.runs, alert.streak.last_error) == (3, "watchdog (systemd: killed ABRT)")


def test_a_stopped_run_neither_ends_nor_extends_the_streak() -> None:
    timeline = Timeline()
    timeline.run(Kind.FAILURE, "backend_unavailable: 503")
    before = timeline.state

    timeline.run(Kind.STOPPED)

    assert timeline.state == before and timeline.sent == []


def test_a_run_stopped_by_runtimemaxsec_is_a_failure_through_the_handler() -> None:
    """systemd stops it with SIGTERM: the run winds down and records "stopped", yet the unit's Result is timeout."""
    timeline = Timeline()
    invocation = timeline.run(Kind.STOPPED)

    timeline.handler(invocation, "timeout (systemd: exited 0)")

    assert timeline.state.streak is not None and timeline.state.streak.first_error == "timeout (systemd: exited 0)"


def test_an_alert_not_delivered_is_due_again_at_the_next_failure() -> None:
    state = State()
    first = Outcome(Kind.FAILURE, START, "a", "endpoint_misconfigured: 401", configuration=True)
    state, alert = streak.after_failed_unit(state, first, AFTER)
    assert alert is not None  # ... and the webhook answered 500: the state is not marked alerted

    second = Outcome(Kind.FAILURE, START + timedelta(minutes=5), "b", "endpoint_misconfigured: 401", configuration=True)
    state, again = streak.after_failed_unit(state, second, AFTER)

    assert again is not None and again.streak.runs == 2


@pytest.mark.parametrize(
    "state",
    [
        State(),
        State(streak.Streak(START, START, 1, "a", "a"), "invocation-1"),
        State(
            streak.Streak(START, START + timedelta(hours=2), 24, "first é", "last", True, True, START),
            "invocation-24",
        ),
    ],
)
def test_the_state_survives_its_file_format(state: State) -> None:
    assert streak.from_json(json.loads(json.dumps(streak.as_json(state)))) == state


@pytest.mark.parametrize("data", [[], {"format": 2, "streak": None, "recorded": None}, {"format": 1}, "x"])
def test_a_file_holding_something_else_is_unreadable_not_a_crash(data: object) -> None:
    with pytest.raises(streak.Unreadable):
        streak.from_json(data)


def test_the_state_directory_is_the_one_systemd_announces() -> None:
    assert str(streak.directory({"STATE_DIRECTORY": "/var/lib/email-sync"})) == "/var/lib/email-sync"
    assert str(streak.directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"})) == "/var/lib/a"
    assert streak.directory({}) is None


RECORDER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from emailsync.report import streak

file = streak.StreakFile(Path(sys.argv[1]))
for n in range(int(sys.argv[3])):
    with file.locked():
        failure = streak.Outcome(streak.Kind.FAILURE, datetime.now(UTC), f"{sys.argv[2]}-{n}", "backend_unavailable")
        state, _ = streak.after_failed_unit(file.read(), failure, 3)
        file.write(state)
"""


def test_processes_recording_at_the_same_time_lose_no_failure(tmp_path: Path) -> None:
    writers, each = 4, 25
    processes = [
        subprocess.Popen([sys.executable, "-c", RECORDER, str(tmp_path), f"writer{w}", str(each)])
        for w in range(writers)
    ]

    assert [process.wait(timeout=120) for process in processes] == [0] * writers

    recorded = streak.StreakFile(tmp_path).read().streak
    assert recorded is not None and recorded.runs == writers * each
    assert sorted(path.name for path in tmp_path.iterdir()) == [streak.FILE, streak.LOCK]  # no temporary file left
