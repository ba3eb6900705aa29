"""`email-sync alert`: tell someone that a run failed. Started by systemd through OnFailure=.

systemd (≥ 251) hands a failure handler the failed unit's facts in $MONITOR_UNIT, $MONITOR_SERVICE_RESULT,
$MONITOR_EXIT_CODE, $MONITOR_EXIT_STATUS and $MONITOR_INVOCATION_ID; the invocation id finds exactly that run's
lines in the journal. Off unless alert.webhook_url or alert.command is set.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import structlog

from emailsync import outbound
from emailsync.config import Config
from emailsync.errors import TemporaryError
from emailsync.logs import redact_and_truncate

LOG_LINES = 20
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


def send(config: Config, alert: dict[str, Any]) -> bool:
    """Deliver a failed unit's alert; False when alerting is off."""
    if not deliver(config, alert):
        log.info("alert_disabled", unit=alert["unit"], hint="set alert.webhook_url or alert.command")
        return False
    log.info("alert_sent", unit=alert["unit"], result=alert["result"], exit_status=alert["exit_status"])
    return True


def deliver(config: Config, alert: dict[str, Any]) -> bool:
    """POST the alert's JSON to the webhook and/or hand it to the command; False when alerting is off."""
    webhook, command = config.alert.webhook_url, config.alert.command
    if not webhook and not command:
        return False
    body = json.dumps(alert, default=str)
    if webhook:
        _post(config, webhook, body)
    if command:
        _run(command, body)
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
