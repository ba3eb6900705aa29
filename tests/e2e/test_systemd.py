"""email-sync under a real systemd (PID 1 of a Debian 12 container), started by its timer and units as shipped.

Each test asserts on the database and on the journal (journalctl -o json inside the container).
"""

from __future__ import annotations

import itertools
import json
import re

import pytest

from harness.backend import Backend, Behaviour
from tests.e2e.conftest import (
    ALERT,
    ALERT_RUN,
    METRICS,
    STREAK_FILE,
    TIMER,
    TOKEN_CREDENTIAL,
    UNIT,
    UNIT_DIR,
    Scenario,
    message_text,
)
from tests.e2e.container import PROJECT
from tests.nspawn import log

pytestmark = pytest.mark.timeout(600)  # generous: the first test also builds the rootfs; every wait is bounded

# Journal MESSAGE_IDs of systemd's unit messages (sd-messages.h).
STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
STARTED = "39f53479d3a045ac8e11786248231fbf"
SUCCEEDED = "7ad2d189f7e94e70a38c781354912448"
FAILED = "d9b373ed55a64feb8242e02dbe79a49c"
PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
# The shipped timer, 60x faster, and without its random 0-30 s delay (which would dwarf a 5 s interval).
FAST_TIMER = "[Timer]\nOnBootSec=\nOnBootSec=1s\nOnUnitInactiveSec=5s\nRandomizedDelaySec=0\n"


def by_invocation(e2e: Scenario) -> dict[str, dict[str, dict[str, object]]]:
    """systemd's messages about the service per run: {invocation id: {message id: entry}}."""
    runs: dict[str, dict[str, dict[str, object]]] = {}
    for entry in e2e.systemd_lines():
        if "INVOCATION_ID" in entry and "MESSAGE_ID" in entry:
            runs.setdefault(str(entry["INVOCATION_ID"]), {})[str(entry["MESSAGE_ID"])] = entry
    return runs


def seconds(entry: dict[str, object]) -> float:
    return int(str(entry["__MONOTONIC_TIMESTAMP"])) / 1e6


def test_timer_starts_runs_on_schedule_each_ready_and_successful(e2e: Scenario) -> None:
    users = e2e.database.add_users(5)
    e2e.configure(sync={"max_users_per_run": 2})  # 2 + 2 + 1: three runs, each with work to do
    # As shipped, each start is spread over a fresh random 0-30 s, so the hosts of a fleet drift apart.
    assert e2e.container.show(TIMER, "RandomizedDelayUSec") == {"RandomizedDelayUSec": "30s"}
    # First run at once, then 5 s after each run ends.
    e2e.dropin(TIMER, "e2e", FAST_TIMER)
    e2e.container.run("systemctl", "start", TIMER)

    def three_runs_done() -> dict[str, dict[str, dict[str, object]]] | None:
        runs = by_invocation(e2e)
        return runs if sum(SUCCEEDED in run or FAILED in run for run in runs.values()) >= 3 else None

    runs = e2e.container.wait_for("three runs", three_runs_done, timeout=90)
    e2e.container.run("systemctl", "stop", TIMER)
    e2e.wait_finished(60)

    finished = sorted(
        (run for run in runs.values() if SUCCEEDED in run or FAILED in run), key=lambda run: seconds(run[STARTED])
    )[:3]
    for run in finished:
        assert STARTING in run and STARTED in run, f"a run never reached READY=1: {sorted(run)}"  # notify: Started
        assert SUCCEEDED in run and FAILED not in run, f"a run failed: {[message_text(e) for e in run.values()]}"
    gaps = [seconds(after[STARTING]) - seconds(before[SUCCEEDED]) for before, after in itertools.pairwise(finished)]
    assert all(gap >= 4.5 for gap in gaps), f"runs must start 5 s after the previous one ended, never sooner: {gaps}"
    log(f"gaps between runs: {', '.join(f'{gap:.2f}s' for gap in gaps)}")

    state = e2e.state()
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0")
    assert e2e.database.synced() == set(users)
    assert e2e.database.writes() == dict.fromkeys(users, 1)
    assert [(run.synced, run.outcome) for run in e2e.database.runs()][:3] == [(2, "ok"), (2, "ok"), (1, "ok")]
    assert e2e.database.leased() == []


def test_timer_starts_the_next_run_after_a_failed_one(e2e: Scenario) -> None:
    e2e.database.add_users(2)
    e2e.backend.health_status = 503  # backend down: the run fails with 75, the timer must go on
    e2e.dropin(TIMER, "e2e", FAST_TIMER)
    e2e.container.run("systemctl", "start", TIMER)
    e2e.container.wait_for("a failed run", lambda: any(FAILED in run for run in by_invocation(e2e).values()), 60)
    assert e2e.state()["ExecMainStatus"] == "75"
    e2e.backend.health_status = 200
    e2e.container.wait_for("a later successful run", lambda: e2e.database.synced() == {1, 2}, 60)
    e2e.container.run("systemctl", "stop", TIMER)
    e2e.wait_finished(60)
    assert e2e.state()["Result"] == "success"


def test_every_log_line_is_json_with_the_journal_priority_of_its_level(e2e: Scenario) -> None:
    e2e.database.add_users(4)
    e2e.backend.script(2, Behaviour(status=422))  # one user's failure: a warning line
    first = e2e.run_once()
    assert (first["Result"], first["ExecMainStatus"]) == ("success", "0")
    e2e.backend.health_status = 503  # backend down: an error line, exit 75
    second = e2e.run_once()
    assert (second["Result"], second["ExecMainStatus"]) == ("exit-code", "75")

    lines = e2e.our_lines()
    assert lines, "no journal entries from email-sync"
    levels = set()
    for entry in lines:
        text = message_text(entry)
        assert entry.get("_COMM") == "email-sync" and entry.get("_TRANSPORT") == "journal", entry  # native protocol
        assert not text.startswith("<"), f"the <N> prefix was not consumed by journald: {text!r}"
        try:
            event = json.loads(text)
        except ValueError:
            pytest.fail(f"not a JSON line: {text!r}")
        assert int(entry["PRIORITY"]) == PRIORITIES[event["level"]], (entry["PRIORITY"], event)
        levels.add(event["level"])
    assert {"info", "warning", "error"} <= levels


def test_journal_fields_find_one_users_history(e2e: Scenario) -> None:
    e2e.database.add_users(3)
    e2e.configure(logging={"level": "debug"})  # a success has a line of its own at debug only
    state = e2e.run_once()
    assert state["Result"] == "success", state
    [run] = e2e.database.runs()

    found = e2e.container.run(
        "journalctl", "--no-pager", "-o", "json", "-u", UNIT, f"EMAIL_SYNC_RUN_ID={run.id}", "EMAIL_SYNC_USER_ID=2"
    )
    entries = [json.loads(line) for line in found.stdout.splitlines()]

    assert [entry["EMAIL_SYNC_EVENT"] for entry in entries] == ["user_synced"]
    assert json.loads(message_text(entries[0]))["user_id"] == 2
    assert entries[0]["PRIORITY"] == "7" and entries[0]["SYSLOG_IDENTIFIER"] == "email-sync"


def test_a_trickling_backend_is_cut_at_each_call_deadline_and_the_run_ends_before_the_watchdog(
    e2e: Scenario,
) -> None:
    users = e2e.database.add_users(6)
    # Calls that fit a 10 s watchdog (call_timeout + backoff = 3 s < 10 s / 2), and a lease that may be short
    # because a call is short (email-sync wants lease >= 2 x (retries + 1) x 3 s = 6 s).
    e2e.configure(
        backend={
            "connect_timeout": "1s",
            "read_timeout": "2s",
            "call_timeout": "2s",
            "retry_backoff_max": "1s",
            "retries": 0,
            "concurrency": 2,
        },
        sync={"lease": "10s", "failure_backoff": "1h"},  # once per run: a short backoff would re-claim them now
    )
    e2e.dropin(UNIT, "watchdog", "[Service]\nWatchdogSec=10s\n")
    # Headers at once, then a byte every 0.5 s forever: the read timeout never fires, the call deadline does.
    e2e.backend.set_default(Behaviour(trickle=0.5))

    cut = e2e.run_once(timeout=45)
    assert (cut["Result"], cut["ExecMainStatus"]) == ("success", "0"), [message_text(line) for line in e2e.our_lines()]
    failed = [line for line in e2e.our_lines() if "user_failed" in message_text(line)]
    assert len(failed) == len(users) and all("backend.call_timeout (2s)" in message_text(f) for f in failed)
    assert e2e.database.writes() == {} and e2e.database.leased() == []

    e2e.backend.set_default(Behaviour())
    e2e.database.execute("UPDATE email_sync_user_state SET next_attempt_at = now()")  # the hour has passed
    again = e2e.run_once()
    assert (again["Result"], again["ExecMainStatus"]) == ("success", "0"), again
    assert e2e.database.synced() == set(users)
    assert e2e.database.writes() == dict.fromkeys(users, 1)


def test_stop_mid_cycle_records_calls_in_flight_and_releases_the_rest(e2e: Scenario) -> None:
    users = e2e.database.add_users(10)
    e2e.backend.latency = 2.0
    e2e.configure(backend={"concurrency": 2})
    e2e.container.run("systemd-analyze", "log-level", "debug")  # so PID 1 logs the STOPPING=1 it receives
    try:
        e2e.start()
        assert e2e.backend.wait_for_sync_calls(3, timeout=20)  # two answered, the next ones in flight
        e2e.container.run("systemctl", "stop", UNIT, timeout=90)
    finally:
        e2e.container.run("systemd-analyze", "log-level", "info")
    assert e2e.state()["Result"] == "success"
    # systemctl show forgets the exit status of a stopped unit: read it from systemd's (debug) exit message.
    exits = [e for e in e2e.systemd_lines() if e.get("MESSAGE_ID") == PROCESS_EXIT]
    assert [(e.get("EXIT_CODE"), e.get("EXIT_STATUS")) for e in exits] == [("exited", "0")], exits

    notifications = [message_text(e) for e in e2e.journal() if e.get("_PID") == "1"]
    assert any("STOPPING=1" in line for line in notifications), "email-sync never sent STOPPING=1"
    finished = [event for event in e2e.events() if event["event"] == "cycle_finished"]
    assert [event["outcome"] for event in finished] == ["interrupted"]

    called = {int(call.user_id) for call in e2e.backend.sync_calls()}
    assert 3 <= len(called) < len(users)
    assert e2e.database.synced() == called  # every call in flight at SIGTERM was waited for and recorded
    assert e2e.database.leased() == []  # the users never called were given back at once
    (run,) = e2e.database.runs()
    assert (run.outcome, run.synced) == ("interrupted", len(called))
    assert run.skipped <= len(users) - len(called)  # claimed but never started: released (claims run ahead by <= 4)

    # Nothing lost: the next run syncs exactly the others.
    e2e.backend.latency = 0.0
    again = e2e.run_once()
    assert (again["Result"], again["ExecMainStatus"]) == ("success", "0")
    assert e2e.database.synced() == set(users)
    assert e2e.database.writes() == dict.fromkeys(users, 1)
    assert all(len(e2e.backend.sync_calls(user)) == 1 for user in users)


def test_wrong_endpoint_fails_the_unit_with_78_and_one_clear_error(e2e: Scenario) -> None:
    e2e.database.add_users(5)
    e2e.configure(backend={"sync_path": "/api/v9/no-such-endpoint"})
    state = e2e.run_once()
    assert (state["Result"], state["ExecMainStatus"]) == ("exit-code", "78"), state

    errors = [e for e in e2e.our_lines() if int(e["PRIORITY"]) <= 3]
    assert len(errors) == 1, [message_text(e) for e in errors]
    assert "backend.sync_path" in json.loads(message_text(errors[0]))["error"]
    status = e2e.container.run("systemctl", "status", "--no-pager", "--lines=20", UNIT, check=False)
    assert status.returncode == 3, status.stdout  # "not running", the unit failed
    assert "status=78" in status.stdout and "backend.sync_path" in status.stdout, status.stdout
    assert e2e.database.synced() == set() and e2e.database.leased() == []
    assert e2e.database.scalar("SELECT coalesce(max(failures), 0) FROM email_sync_user_state") == 0


def test_a_failed_run_sends_the_alert_with_its_exit_status_and_log_lines(e2e: Scenario) -> None:
    with Backend(sync_path="/hooks/email-sync") as hook:
        e2e.database.add_users(2)
        e2e.configure(
            backend={"sync_path": "/api/v9/no-such-endpoint"},
            alert={"webhook_url": hook.base_url + "/hooks/email-sync"},
        )
        state = e2e.run_once()
        assert state["ExecMainStatus"] == "78", state
        assert hook.wait_for_sync_calls(1, timeout=60), "the OnFailure alert never reached the webhook"
        [alert] = [call.json for call in hook.sync_calls()]

    assert (alert["unit"], alert["result"], alert["exit_status"]) == (UNIT, "exit-code", "78"), alert
    assert alert["invocation_id"] == state["InvocationID"]
    assert any("backend.sync_path" in line for line in alert["log"]), alert["log"]


def failed_runs(e2e: Scenario) -> list[str]:
    """The invocation ids of the runs that systemd saw fail, in order."""
    runs = [run for run in by_invocation(e2e).values() if FAILED in run]
    return [str(run[FAILED]["INVOCATION_ID"]) for run in sorted(runs, key=lambda run: seconds(run[FAILED]))]


def succeeded_runs(e2e: Scenario) -> int:
    return sum(SUCCEEDED in run for run in by_invocation(e2e).values())


def test_a_backend_down_for_several_runs_alerts_once_and_resolves_once(e2e: Scenario) -> None:
    users = e2e.database.add_users(3)
    with Backend(sync_path="/hooks/email-sync") as hook:
        e2e.configure(alert={"webhook_url": hook.base_url + "/hooks/email-sync"})  # alert.after: its default, 3
        e2e.backend.health_status = 503
        e2e.dropin(TIMER, "e2e", FAST_TIMER)
        e2e.container.run("systemctl", "start", TIMER)
        e2e.container.wait_for("six failed runs", lambda: len(failed_runs(e2e)) >= 6, timeout=180)
        # A run waits for the alert unit still handling the previous failure (After=): once the sixth has failed,
        # the fifth has been handled; the sixth's handler runs now.
        assert len(hook.sync_calls()) == 1, [call.json for call in hook.sync_calls()]
        e2e.backend.health_status = 200
        e2e.container.wait_for("the resolved message", lambda: len(hook.sync_calls()) >= 2, timeout=120)
        e2e.container.wait_for("one more successful run", lambda: succeeded_runs(e2e) >= 2, timeout=60)
        e2e.container.run("systemctl", "stop", TIMER)
        e2e.wait_finished(60)
        alert, resolved = [call.json for call in hook.sync_calls()]

    failed = failed_runs(e2e)
    log(f"{len(failed)} failed runs, then {succeeded_runs(e2e)} successful ones: 2 messages")
    assert (alert["event"], alert["result"], alert["exit_status"]) == ("failing", "exit-code", "75"), alert
    assert (alert["streak"]["runs"], alert["invocation_id"]) == (3, failed[2]), alert
    assert alert["streak"]["first_error"].startswith("backend_unavailable: "), alert
    assert resolved["event"] == "resolved", resolved
    assert resolved["streak"]["runs"] == len(failed), (resolved, failed)  # every failed run counted, once
    assert resolved["streak"]["first_error"] == alert["streak"]["first_error"]
    assert resolved["streak"]["since"] == alert["streak"]["since"] < resolved["resolved_at"]
    assert e2e.database.synced() == set(users)
    handler = e2e.container.show(ALERT_RUN, "Result", "ExecMainStatus", "User")
    assert handler == {"Result": "success", "ExecMainStatus": "0", "User": "email-sync"}, handler
    assert '"streak": null' in e2e.container.path(STREAK_FILE).read_text()  # over, and written by the run


def test_a_run_waits_for_the_alert_unit_still_handling_the_previous_failure(e2e: Scenario) -> None:
    """The alert unit is slowed down here, so the next run is started while it still works: without the service's
    After=email-sync-alert@%n.service, that run would end the streak before its alert went out (silently, as a
    streak never alerted), and the alert unit would then record the failure again as a new streak that nobody
    ends: an alert and no resolved."""
    users = e2e.database.add_users(2)
    e2e.dropin(ALERT, "slow", "[Service]\nExecStartPre=/bin/sleep 6\n")
    with Backend(sync_path="/hooks/email-sync") as hook:
        e2e.configure(alert={"webhook_url": hook.base_url + "/hooks/email-sync", "after": 1})
        e2e.backend.health_status = 503
        failed = e2e.run_once()
        assert (failed["Result"], failed["ExecMainStatus"]) == ("exit-code", "75"), failed
        e2e.backend.health_status = 200
        state = e2e.run_once(timeout=90)  # started while the alert unit sleeps
        assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
        assert hook.wait_for_sync_calls(2, timeout=30), [call.json for call in hook.sync_calls()]
        messages = [call.json for call in hook.sync_calls()]

    assert [(m["event"], m["streak"]["runs"]) for m in messages] == [("failing", 1), ("resolved", 1)], messages
    assert messages[0]["invocation_id"] == failed["InvocationID"]
    assert e2e.database.synced() == set(users)


def test_a_wrong_token_alerts_once_at_the_first_run(e2e: Scenario) -> None:
    e2e.database.add_users(3)
    e2e.backend.token = "e2e-right-token"
    e2e.container.write(TOKEN_CREDENTIAL, "e2e-wrong-token\n", mode=0o600)
    with Backend(sync_path="/hooks/email-sync") as hook:
        e2e.configure(alert={"webhook_url": hook.base_url + "/hooks/email-sync"})
        e2e.dropin(TIMER, "e2e", FAST_TIMER)
        e2e.container.run("systemctl", "start", TIMER)
        e2e.container.wait_for("three failed runs", lambda: len(failed_runs(e2e)) >= 3, timeout=120)
        e2e.container.run("systemctl", "stop", TIMER)
        e2e.wait_finished(60)
        e2e.container.write(TOKEN_CREDENTIAL, "e2e-right-token\n", mode=0o600)
        state = e2e.run_once()  # starts once the alert unit has handled the last failure (After=)
        assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
        assert hook.wait_for_sync_calls(2, timeout=30), [call.json for call in hook.sync_calls()]
        alert, resolved = [call.json for call in hook.sync_calls()]

    failed = failed_runs(e2e)
    assert (alert["event"], alert["exit_status"], alert["streak"]["runs"]) == ("failing", "78", 1), alert
    assert alert["invocation_id"] == failed[0], (alert, failed)  # sent after the first run, none after the others
    assert alert["streak"]["configuration"] is True and "token" in alert["streak"]["first_error"], alert
    assert "e2e-wrong-token" not in json.dumps(alert)
    assert (resolved["event"], resolved["streak"]["runs"]) == ("resolved", len(failed)), (resolved, failed)


def test_backend_token_credential_reaches_the_service_and_without_it_the_unit_still_starts(e2e: Scenario) -> None:
    token = "e2e-token-Zq4vX9"
    e2e.backend.token = token
    e2e.container.write(TOKEN_CREDENTIAL, token + "\n", mode=0o600)  # root-only: systemd hands it over
    e2e.database.add_users(3)
    state = e2e.run_once()
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    calls = e2e.backend.sync_calls()
    assert len(calls) == 3 and {call.header("Authorization") for call in calls} == {f"Bearer {token}"}
    assert e2e.database.synced() == {1, 2, 3}

    # No token credential: the unit still starts (no 243/CREDENTIALS), and email-sync names the problem.
    e2e.container.path(TOKEN_CREDENTIAL).unlink()
    e2e.database.add_users(3, start=4)
    state = e2e.run_once()
    assert (state["Result"], state["ExecMainStatus"]) == ("exit-code", "78"), state
    errors = [json.loads(message_text(e)) for e in e2e.our_lines() if int(e["PRIORITY"]) <= 3]
    assert len(errors) == 1 and "token" in errors[0]["error"], errors
    assert all(token not in message_text(e) for e in e2e.journal())


def test_the_dynamic_user_writes_the_default_metrics_textfile_for_other_users_to_read(e2e: Scenario) -> None:
    e2e.database.add_users(2)
    state = e2e.run_once()
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    assert not [e for e in e2e.events() if e["event"] == "metrics_not_written"], e2e.events()
    # Read as an unprivileged user, as node_exporter (user prometheus) reads it.
    done = e2e.container.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", METRICS)
    assert "email_sync_last_run_success 1.0" in done.stdout, done.stdout
    assert 'email_sync_last_run_users{outcome="synced"} 2.0' in done.stdout, done.stdout


def test_units_pass_systemd_analyze_verify_and_security(e2e: Scenario) -> None:
    units = [f"{UNIT_DIR}/{UNIT}", f"{UNIT_DIR}/{TIMER}", f"{UNIT_DIR}/{ALERT}"]
    # --man=no: this container has the units from the tree, not the package's man page; that every Documentation=
    # target is installed is tests/deb/test_unit_docs.py's to prove, against the package's install list.
    verify = e2e.container.run("systemd-analyze", "verify", "--man=no", *units, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    security = e2e.container.run(
        "systemd-analyze", "security", "--offline=yes", "--threshold=15", "--no-pager", UNIT, check=False
    )
    assert security.returncode == 0, security.stdout + security.stderr
    score = re.search(r"Overall exposure level for email-sync\.service: (\d+\.\d)", security.stdout)
    assert score and float(score[1]) <= 1.5, security.stdout
    log(f"systemd-analyze security: {score[1]}")

    # The site-specific drop-in example is a valid drop-in as shipped.
    e2e.dropin(UNIT, "ipaddress-allow", (PROJECT / "systemd" / "ipaddress-allow.conf.example").read_text())
    verify = e2e.container.run("systemd-analyze", "verify", "--man=no", UNIT, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
