"""Alerts about failing runs: one when a failure streak starts, one "resolved" when a run succeeds again
(emailsync/report/streak.py keeps the streak and its rules), and the quarantine alert's delivery.

`email-sync alert` is the OnFailure= handler: systemd (>= 251) hands it the failed unit's facts in $MONITOR_UNIT,
$MONITOR_SERVICE_RESULT, $MONITOR_EXIT_CODE, $MONITOR_EXIT_STATUS and $MONITOR_INVOCATION_ID; the invocation id
finds exactly that run's lines in the journal. It records the failure (unless the run did) and sends the alert when
the streak calls for one. The run sends the "resolved" at its end. Delivery is off unless alert.webhook_url or
alert.command is set; the streak is kept all the same.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from emailsync.config.settings import Config
from emailsync.errors import EXIT_CONFIG, EmailSyncError, TemporaryError
from emailsync.redaction import redact_and_truncate
from emailsync.report import outbound, streak
from emailsync.report.streak import Kind, Outcome, State, StreakFile

LOG_LINES = 20
ERROR_CHARS = 500  # of an error kept in the streak: the line an operator reads first
UNIT = "email-sync.service"
log = structlog.get_logger()


def facts(unit: str, env: Mapping[str, str]) -> dict[str, Any]:
    """What failed, where, how, and the last lines it logged."""
    invocation = env.get("MONITOR_INVOCATION_ID", "")
    return {
        "host": os.uname().nodename,
        "unit": env.get("MONITOR_UNIT") or unit,
        "result": env.get("MONITOR_SERVICE_RESULT", "unknown"),
        "exit_code": env.get("MONITOR_EXIT_CODE", "unknown"),
        "exit_status": env.get("MONITOR_EXIT_STATUS", "unknown"),
        "invocation_id": invocation or None,
        "log": _journal(env.get("MONITOR_UNIT") or unit, invocation),
    }


def _journal(unit: str, invocation: str) -> list[str]:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return []
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else ["-u", unit]
    result = subprocess.run(
        [journalctl, "--no-pager", "-o", "cat", "-n", str(LOG_LINES), *match],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [redact_and_truncate(line, 1000) for line in result.stdout.splitlines()]


def on_failure(config: Config, unit: str, env: Mapping[str, str]) -> None:
    """The OnFailure handler: record the failed run in the streak and send the alert when the streak calls for it.
    Without a state directory (or one it cannot write), every failed run alerts: better one alert too many than
    none."""
    found = facts(unit, env)
    failure = Outcome(
        Kind.FAILURE,
        _now(),
        found["invocation_id"],
        _failure_line(found),
        configuration=(found["exit_code"], found["exit_status"]) == ("exited", str(EXIT_CONFIG)),
    )
    where = streak.directory(env)
    if where is not None:
        try:
            _alert_once(config, found, failure, StreakFile(where), config.alert.after)
            return
        except OSError as error:
            log.warning("streak_not_recorded", file=str(where / streak.FILE), error=_os_error(error))
    _send_failing(config, found, None)


def _alert_once(config: Config, found: dict[str, Any], failure: Outcome, file: StreakFile, after: int) -> None:
    with file.locked():
        state, alert = streak.after_failed_unit(_read(file), failure, after)
        file.write(state)  # before sending: a failure recorded survives a webhook that is down
        if alert is None:  # not yet due, or already sent
            log.info("alert_held", after=after, streak=streak.streak_json(state.streak) if state.streak else None)
            return
        if not _send_failing(config, found, alert.streak):
            return
        try:
            file.write(streak.alerted(state, _now()))
        except OSError as error:  # sent: the next failed run alerts again, which is better than sending twice now
            log.warning("streak_not_recorded", file=str(file.path), error=_os_error(error))


def _send_failing(config: Config, found: dict[str, Any], failing: streak.Streak | None) -> bool:
    """Deliver a failure alert; False when alerting is off."""
    if failing is None:
        summary = f"{found['unit']} on {found['host']} failed: {found['result']} ({found['exit_status']})"
    else:
        summary = (
            f"{found['unit']} on {found['host']} is failing: {_runs(failing.runs)} failed since "
            f"{_when(failing.since)}; first error: {failing.first_error}"
        )
    body = {
        "event": "failing",
        **found,
        "streak": streak.streak_json(failing) if failing else None,
        "summary": summary,
    }
    if not deliver(config, body):
        log.info("alert_disabled", unit=found["unit"], hint="set alert.webhook_url or alert.command")
        return False
    log.info("alert_sent", kind="failing", unit=found["unit"], result=found["result"], exit_status=found["exit_status"])
    return True


def wants_freshness(config: Config, error: EmailSyncError | None, env: Mapping[str, str]) -> bool:
    """Whether a failed run should ask the database if the freshness promise still holds: a broken one makes the
    alert of a streak of temporary failures due before alert.after runs."""
    alerting = bool(config.alert.webhook_url or config.alert.command)
    return alerting and isinstance(error, TemporaryError) and streak.directory(env) is not None


def run_ended(
    config: Config, run_id: str, outcome: str, error: EmailSyncError | None, stale: bool, env: Mapping[str, str]
) -> None:
    """The run's part of the streak, at its very end: record its outcome; when it ends a streak that was alerted,
    send the "resolved". Nothing here fails the run: a problem is a warning line."""
    from emailsync.store.runs import HEALTHY_OUTCOMES

    where = streak.directory(env)
    if where is None:
        return
    stopped = Kind.STOPPED if outcome in HEALTHY_OUTCOMES else Kind.FAILURE  # by systemd, a pause or a drain
    kind = Kind.SUCCESS if outcome == "ok" else stopped
    ended = Outcome(
        kind,
        _now(),
        env.get("INVOCATION_ID") or None,
        redact_and_truncate(f"{outcome}: {error}" if error else outcome, ERROR_CHARS),
        configuration=error is not None and error.exit_code == EXIT_CONFIG,
        stale=stale,
    )
    file = StreakFile(where)
    try:
        with file.locked():
            state = _read(file)
            new, resolved = streak.after_run(state, ended)
            if resolved is not None and not _send_resolved(config, run_id, ended.invocation, resolved):
                return  # kept: the next successful run sends it
            if new != state:
                file.write(new)
    except OSError as failure:
        log.warning("streak_not_recorded", file=str(file.path), error=_os_error(failure))


def _send_resolved(config: Config, run_id: str, invocation: str | None, resolved: streak.Resolved) -> bool:
    """Deliver the "resolved"; False when it could not be delivered (it is logged)."""
    from emailsync.systemd.timespan import brief

    ended, host = resolved.streak, os.uname().nodename
    body = {
        "event": "resolved",
        "host": host,
        "unit": UNIT,
        "invocation_id": invocation,
        "run_id": run_id,
        "resolved_at": resolved.at.isoformat(),
        "duration_s": round(resolved.duration_s, 3),
        "streak": streak.streak_json(ended),
        "summary": (
            f"{UNIT} on {host} is back: a run succeeded after {_runs(ended.runs)} failed over "
            f"{brief(resolved.duration_s)}; first error: {ended.first_error}"
        ),
    }
    try:
        if deliver(config, body):
            log.info("alert_sent", kind="resolved", unit=UNIT, runs=ended.runs, duration_s=body["duration_s"])
    except TemporaryError as error:
        log.warning("alert_failed", kind="resolved", error=str(error))
        return False
    return True


def _read(file: StreakFile) -> State:
    """The state, or a fresh one when the file holds something else (that file is removed)."""
    try:
        return file.read()
    except streak.Unreadable as error:
        log.warning("streak_reset", file=str(file.path), error=str(error))
        file.path.unlink(missing_ok=True)
        return State()


def _failure_line(found: dict[str, Any]) -> str:
    """What failed, for a run that could not say it itself: its last error line in the journal, else how systemd
    ended it (a watchdog kill leaves only a Python stack)."""
    for line in reversed(found["log"]):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical") and event.get("error"):
            return redact_and_truncate(f"{event.get('event')}: {event['error']}", ERROR_CHARS)
    return f"{found['result']} (systemd: {found['exit_code']} {found['exit_status']})"


def _now() -> datetime:
    return datetime.now(UTC)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _os_error(error: OSError) -> str:
    return f"{error.strerror or error}: {error.filename}" if error.filename else str(error.strerror or error)


def deliver(config: Config, alert: dict[str, Any]) -> bool:
    """POST the alert's JSON to the webhook and/or hand it to the command; False when alerting is off.

    Each is tried whatever became of the other, and the alert counts as delivered when one of them took it: a
    failing command must not have the webhook's alert sent again with the next one, nor a webhook that is down keep
    it from the command. The one that failed is a warning; TemporaryError only when neither took it."""
    webhook, command = config.alert.webhook_url, config.alert.command
    body = json.dumps(alert, default=str)
    sends: list[Callable[[], None]] = []
    if webhook:
        sends.append(functools.partial(_post, config, webhook, body))
    if command:
        sends.append(functools.partial(_run, command, body))
    if not sends:
        return False
    failures: list[str] = []
    for send in sends:
        try:
            send()
        except TemporaryError as error:
            failures.append(str(error))
    if len(failures) == len(sends):
        raise TemporaryError("; ".join(failures))
    for failure in failures:
        log.warning("alert_failed", kind=alert.get("event"), error=failure, delivered=True)
    return True


def _post(config: Config, url: str, body: str) -> None:
    headers = {"Content-Type": "application/json"}
    try:
        status = outbound.request(
            "POST",
            url,
            body.encode(),
            headers,
            connect=config.backend.connect_timeout,
            read=config.backend.read_timeout,
        )
    except outbound.Unreachable as failure:
        raise TemporaryError(f"alert webhook unreachable: {failure}") from None
    if not 200 <= status < 300:
        raise TemporaryError(f"alert webhook answered {status}")


def _run(command: str, body: str) -> None:
    argv = shlex.split(command)
    try:
        result = subprocess.run(argv, input=body, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TemporaryError(f"alert.command {argv[0]} could not run: {error}") from None
    if result.returncode != 0:
        raise TemporaryError(f"alert.command {argv[0]} exited {result.returncode}")
