"""Alerts a person can live with: one alert when runs start failing, nothing while they go on failing, one "resolved"
when a run succeeds again, through a real webhook on 127.0.0.1 (and the command).

Each test plays systemd: a run gets its $INVOCATION_ID and $STATE_DIRECTORY, and after a failed run the OnFailure
handler (`email-sync alert`) gets the run's $MONITOR_* facts and the same state directory.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from emailsync.errors import EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL
from emailsync.report import streak
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, CommandResult, EmailSync

HOOK = "/hooks/email-sync"


class Systemd:
    """email-sync.service and its OnFailure= handler, started the way systemd starts them."""

    def __init__(self, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
        self.email_sync = email_sync
        self.monkeypatch = monkeypatch
        self.state = state
        self.handled: list[CommandResult] = []

    def run(self) -> CommandResult:
        """One run; when it fails, the handler, as OnFailure= starts it."""
        invocation = uuid.uuid4().hex
        with self.monkeypatch.context() as env:
            env.setenv("STATE_DIRECTORY", str(self.state))
            env.setenv("INVOCATION_ID", invocation)
            result = self.email_sync("run")
        if result.code != EXIT_OK:
            self.handle(invocation, "exit-code", "exited", str(result.code))
        return result

    def handle(self, invocation: str, result: str, exit_code: str, exit_status: str) -> CommandResult:
        with self.monkeypatch.context() as env:
            env.setenv("STATE_DIRECTORY", str(self.state))
            for name, value in {
                "MONITOR_UNIT": "email-sync.service",
                "MONITOR_SERVICE_RESULT": result,
                "MONITOR_EXIT_CODE": exit_code,
                "MONITOR_EXIT_STATUS": exit_status,
                "MONITOR_INVOCATION_ID": invocation,
            }.items():
                env.setenv(name, value)
            handled = self.email_sync("alert", "email-sync.service")
        self.handled.append(handled)
        return handled

    def watchdog_kill(self) -> CommandResult:
        """A run that systemd aborted: it recorded nothing, only the handler can."""
        return self.handle(uuid.uuid4().hex, "watchdog", "killed", "ABRT")


@pytest.fixture
def systemd(email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Systemd:
    state = tmp_path / "state"
    state.mkdir()
    return Systemd(email_sync, monkeypatch, state)


@pytest.fixture
def hook() -> Any:
    with Backend(sync_path=HOOK) as server:
        yield server


def messages(hook: Backend) -> list[dict[str, Any]]:
    """What the webhook accepted, in order."""
    return [call.json for call in hook.sync_calls()]


def test_a_backend_down_for_several_runs_gives_one_alert_and_one_resolved(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK})
    backend.health_status = 503

    sent_after_each_run = []
    for _ in range(6):
        assert systemd.run().code == EXIT_TEMPFAIL
        sent_after_each_run.append(len(hook.sync_calls()))
    backend.health_status = 200
    assert systemd.run().code == EXIT_OK
    assert systemd.run().code == EXIT_OK

    assert sent_after_each_run == [0, 0, 1, 1, 1, 1]  # alert.after = 3 by default
    alert, resolved = messages(hook)
    assert (alert["event"], alert["exit_status"], alert["streak"]["runs"]) == ("failing", "75", 3)
    assert alert["streak"]["first_error"].startswith("backend_unavailable: ")
    assert resolved["event"] == "resolved"
    assert resolved["streak"]["runs"] == 6
    assert resolved["streak"]["first_error"] == alert["streak"]["first_error"]
    assert resolved["streak"]["since"] == alert["streak"]["since"]
    assert resolved["resolved_at"] > resolved["streak"]["since"]
    assert "6 runs failed" in resolved["summary"] and "backend_unavailable" in resolved["summary"]
    assert pg.synced_ids() == {1, 2, 3}


def test_a_wrong_token_alerts_at_the_first_run_and_not_again(
    pg: AppDb, hook: Backend, email_sync: EmailSync, systemd: Systemd, tmp_path: Path
) -> None:
    pg.add_users(3)
    token = tmp_path / "token"
    token.write_text("wrong-token-value")
    token.chmod(0o600)
    with Backend(token="right-token") as backend:
        email_sync.configure(
            pg, backend, backend={"token_file": str(token)}, alert={"webhook_url": hook.base_url + HOOK}
        )
        assert systemd.run().code == EXIT_CONFIG
        assert len(hook.sync_calls()) == 1
        assert systemd.run().code == EXIT_CONFIG
        held = systemd.handled[-1].event("alert_held")
        token.write_text("right-token")
        assert systemd.run().code == EXIT_OK

    alert, resolved = messages(hook)
    assert (alert["event"], alert["exit_status"]) == ("failing", "78")
    assert alert["streak"]["runs"] == 1 and alert["streak"]["configuration"] is True
    assert "token" in alert["streak"]["first_error"] and "wrong-token-value" not in json.dumps(alert)
    assert held["streak"]["runs"] == 2 and held["streak"]["alerted_at"] is not None
    assert (resolved["event"], resolved["streak"]["runs"]) == ("resolved", 2)


def test_the_command_gets_the_alert_and_the_resolved_too(
    pg: AppDb, email_sync: EmailSync, systemd: Systemd, tmp_path: Path
) -> None:
    received = tmp_path / "received.jsonl"
    pg.add_users(2)
    with Backend(sync_path="/elsewhere") as backend:
        command = f"sh -c 'cat >> {received}; echo >> {received}'"
        email_sync.configure(pg, backend, alert={"command": command})
        assert systemd.run().code == EXIT_CONFIG  # the endpoint answers 404: exit 78, an alert at once
        email_sync.configure(pg, backend, backend={"sync_path": "/elsewhere"}, alert={"command": command})
        assert systemd.run().code == EXIT_OK

    alert, resolved = [json.loads(line) for line in received.read_text().splitlines()]
    assert (alert["event"], alert["streak"]["runs"]) == ("failing", 1)
    assert "backend.sync_path" in alert["streak"]["first_error"]
    assert (resolved["event"], resolved["streak"]["first_error"]) == ("resolved", alert["streak"]["first_error"])


def test_a_failing_command_does_not_have_the_webhook_alert_sent_twice(
    pg: AppDb, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(1)
    with Backend(sync_path="/elsewhere") as backend:
        alert = {"webhook_url": hook.base_url + HOOK, "command": "false"}
        email_sync.configure(pg, backend, alert=alert)
        assert systemd.run().code == EXIT_CONFIG  # the endpoint answers 404: an alert at once
        assert systemd.run().code == EXIT_CONFIG
        email_sync.configure(pg, backend, backend={"sync_path": "/elsewhere"}, alert=alert)
        assert systemd.run().code == EXIT_OK

    first, second = systemd.handled
    assert first.code == EXIT_OK and "alert.command false exited 1" in first.event("alert_failed")["error"]
    assert second.event("alert_held")["streak"]["alerted_at"] is not None
    assert [message["event"] for message in messages(hook)] == ["failing", "resolved"]


def test_a_webhook_that_is_down_does_not_keep_the_alert_from_the_command(
    pg: AppDb, hook: Backend, email_sync: EmailSync, systemd: Systemd, tmp_path: Path
) -> None:
    received = tmp_path / "received.jsonl"
    pg.add_users(1)
    hook.set_default(Behaviour(status=500))
    with Backend(sync_path="/elsewhere") as backend:
        command = f"sh -c 'cat >> {received}; echo >> {received}'"
        email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK, "command": command})
        assert systemd.run().code == EXIT_CONFIG

    (handled,) = systemd.handled
    assert handled.code == EXIT_OK and "alert webhook answered 500" in handled.event("alert_failed")["error"]
    (alert,) = [json.loads(line) for line in received.read_text().splitlines()]
    assert (alert["event"], alert["streak"]["runs"]) == ("failing", 1)


def test_the_streak_survives_a_database_outage(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(2)
    webhook = {"webhook_url": hook.base_url + HOOK}
    backend.health_status = 503
    email_sync.configure(pg, backend, alert=webhook)
    assert systemd.run().code == EXIT_TEMPFAIL
    backend.health_status = 200
    down = email_sync.configure(pg, backend, alert=webhook)
    down.write_text(down.read_text().replace(pg.url, "postgresql://postgres@127.0.0.1:9/gone"))
    assert systemd.run().code == EXIT_TEMPFAIL
    assert systemd.run().code == EXIT_TEMPFAIL
    email_sync.configure(pg, backend, alert=webhook)
    assert systemd.run().code == EXIT_OK

    alert, resolved = messages(hook)
    assert alert["streak"]["runs"] == 3
    assert alert["streak"]["first_error"].startswith("backend_unavailable: ")
    assert alert["streak"]["last_error"].startswith("database_unavailable: ")
    assert (resolved["streak"]["runs"], resolved["streak"]["first_error"]) == (3, alert["streak"]["first_error"])


def test_a_broken_freshness_promise_alerts_at_the_first_failed_run(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(2, age=3 * 3600)  # last synced 3 h ago: over the 75 min that status.max_staleness defaults to
    backend.health_status = 503
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK})

    assert systemd.run().code == EXIT_TEMPFAIL

    [alert] = messages(hook)
    assert (alert["streak"]["runs"], alert["streak"]["freshness_broken"]) == (1, True)


def test_watchdog_kills_that_the_run_could_not_record_alert_through_the_handler(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK})

    results = [systemd.watchdog_kill() for _ in range(3)]
    assert systemd.run().code == EXIT_OK

    assert [result.code for result in results] == [EXIT_OK] * 3
    alert, resolved = messages(hook)
    assert (alert["result"], alert["streak"]["runs"]) == ("watchdog", 3)
    assert alert["streak"]["first_error"] == "watchdog (systemd: killed ABRT)"
    assert (resolved["event"], resolved["streak"]["runs"]) == ("resolved", 3)


def test_an_alert_the_webhook_refused_is_sent_at_the_next_failed_run(
    pg: AppDb, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(1)
    with Backend(sync_path="/elsewhere") as backend:
        email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK})
        hook.set_default(Behaviour(status=500))
        systemd.run()
        refused = systemd.handled[-1]
        hook.set_default(Behaviour())
        systemd.run()

    refused.assert_one_clear_error(EXIT_TEMPFAIL, "alert webhook answered 500")  # the alert unit fails, visibly
    assert systemd.handled[-1].code == EXIT_OK
    first, second = messages(hook)
    assert (first["streak"]["runs"], second["streak"]["runs"]) == (1, 2)


def test_a_resolved_the_webhook_refused_is_sent_by_the_next_successful_run(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(2)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK, "after": 1})
    backend.health_status = 503
    systemd.run()
    backend.health_status = 200
    hook.set_default(Behaviour(status=500))

    refused = systemd.run()
    hook.set_default(Behaviour())
    delivered = systemd.run()

    assert refused.code == EXIT_OK and "answered 500" in refused.event("alert_failed")["error"]
    assert delivered.code == EXIT_OK
    assert [message["event"] for message in messages(hook)] == ["failing", "resolved", "resolved"]
    assert (json.loads(hook.sync_calls()[-1].body)["streak"]["runs"]) == 1
    assert streak.StreakFile(systemd.state).read() == streak.State()


def test_a_run_that_a_pause_held_does_not_resolve_the_streak(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK, "after": 1})
    backend.health_status = 503
    systemd.run()
    backend.health_status = 200
    assert email_sync("pause", "--reason", "backend maintenance").code == EXIT_OK

    assert systemd.run().code == EXIT_OK  # paused: healthy, yet nothing says the backend is back
    assert [message["event"] for message in messages(hook)] == ["failing"]
    assert email_sync("resume").code == EXIT_OK
    assert systemd.run().code == EXIT_OK

    assert [message["event"] for message in messages(hook)] == ["failing", "resolved"]
    assert pg.runs()[-2].outcome == "paused"


def test_a_streak_shorter_than_alert_after_ends_without_a_message(
    pg: AppDb, backend: Backend, hook: Backend, email_sync: EmailSync, systemd: Systemd
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK, "after": 3})
    backend.health_status = 503
    systemd.run()
    systemd.run()
    backend.health_status = 200

    assert systemd.run().code == EXIT_OK

    assert hook.sync_calls() == []
    assert [result.event("alert_held")["streak"]["runs"] for result in systemd.handled] == [1, 2]


def test_without_a_state_directory_every_failed_run_alerts(
    pg: AppDb, hook: Backend, email_sync: EmailSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    for name, value in {"MONITOR_SERVICE_RESULT": "exit-code", "MONITOR_EXIT_STATUS": "75"}.items():
        monkeypatch.setenv(name, value)
    email_sync.configure(pg, hook, alert={"webhook_url": hook.base_url + HOOK})

    assert [email_sync("alert").code for _ in range(2)] == [EXIT_OK, EXIT_OK]

    assert [(m["event"], m["streak"]) for m in messages(hook)] == [("failing", None), ("failing", None)]


def test_a_state_directory_that_cannot_be_used_alerts_all_the_same(
    pg: AppDb,
    backend: Backend,
    hook: Backend,
    email_sync: EmailSync,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    systemd = Systemd(email_sync, monkeypatch, tmp_path / "no-such-directory")
    pg.add_users(1)
    email_sync.configure(pg, backend, alert={"webhook_url": hook.base_url + HOOK})
    backend.health_status = 503

    run = systemd.run()

    assert run.code == EXIT_TEMPFAIL and "no-such-directory" in run.event("streak_not_recorded")["file"]
    assert "no-such-directory" in systemd.handled[-1].event("streak_not_recorded")["file"]
    [alert] = messages(hook)
    assert (alert["event"], alert["streak"]) == ("failing", None)


@pytest.mark.parametrize("health", [503, 200])
def test_a_state_file_holding_something_else_is_replaced_with_a_warning(
    pg: AppDb, backend: Backend, email_sync: EmailSync, systemd: Systemd, health: int
) -> None:
    pg.add_users(1)
    email_sync.configure(pg, backend)
    (systemd.state / streak.FILE).write_bytes(b"\xff not json")
    backend.health_status = health

    result = systemd.run()

    assert "not JSON" in result.event("streak_reset")["error"]
    recorded = streak.StreakFile(systemd.state).read().streak
    assert recorded is None if health == 200 else recorded is not None and recorded.runs == 1
    again = systemd.run()
    assert again.events and "streak_reset" not in [event["event"] for event in again.events]
