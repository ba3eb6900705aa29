"""Monitoring pings: tell a dead man's switch (Healthchecks.io, Uptime Kuma, ntfy) how each run went.

A run pings at its start (Healthchecks: ``/start``) and at its end: success only when the run ended healthy AND the
freshness promise holds (every user synced within status.max_staleness), else failure. A timer that stopped, a host
that is down, a run that hangs: none of them pings, and the monitor's period and grace turn the silence into an
alert, which no failure handler on the host itself can do.

A ping never fails or slows the run: the start ping goes out in a thread of its own, each ping (its one retry
included) gives up after monitor.ping_timeout, and a failure is a warning naming the URL's host only: the rest of
the URL is a key that lets anyone ping in our name (Config.secrets redacts it everywhere else).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from emailsync import __version__
from emailsync.config.settings import MonitorConfig
from emailsync.report import outbound

log = structlog.get_logger()
ATTEMPTS = 2  # a ping and at most one retry: a monitor that is down must not hold the run's end for long


@dataclass(frozen=True)
class Ping:
    kind: str  # start, success or fail: what the log line says
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]


def with_path_and_query(url: str, suffix: str, query: dict[str, str]) -> str:
    """``url`` with ``suffix`` added to its path and ``query`` set in its query string, the rest of which is kept."""
    parts = urlsplit(url)
    kept = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name not in query]
    path = parts.path.rstrip("/") + suffix if suffix else parts.path
    return urlunsplit(parts._replace(path=path, query=urlencode([*kept, *query.items()])))


def summary(ok: bool, facts: dict[str, Any]) -> str:
    """The run in one line, for the monitors that show a message rather than a body."""
    line = (
        f"{facts['outcome']} on {facts['host']}: {facts['synced']} synced, {facts['failed']} failed of "
        f"{facts['due']} due in {facts['duration_ms'] / 1000:.1f}s"
    )
    if facts["users_over_max_staleness"] is None:
        line += "; freshness unknown (no database)"
    elif not facts["freshness_ok"]:
        line += f"; {facts['users_over_max_staleness']} users over status.max_staleness"
    return line if ok else f"FAILED: {line}"


def start_ping(config: MonitorConfig, run_id: str) -> Ping | None:
    """Only Healthchecks knows a run's start (it then measures the run and alerts on one that never ends)."""
    if config.ping_style != "healthchecks":
        return None
    return Ping("start", "POST", with_path_and_query(config.ping_url, "/start", {"rid": run_id}), b"", {})


def end_ping(config: MonitorConfig, run_id: str, ok: bool, facts: dict[str, Any]) -> Ping:
    kind = "success" if ok else "fail"
    if config.ping_style == "uptime-kuma":
        query = {"status": "up" if ok else "down", "msg": summary(ok, facts), "ping": str(facts["duration_ms"])}
        return Ping(kind, "GET", with_path_and_query(config.ping_url, "", query), None, {})
    if config.ping_style == "ntfy":
        headers = {
            "Title": f"email-sync {'ok' if ok else 'FAILED'} on {facts['host']}",
            "Priority": "min" if ok else "high",  # min: silent, folded away; a failure rings
            "Tags": "white_check_mark" if ok else "warning",
        }
        return Ping(kind, "POST", config.ping_url, summary(ok, facts).encode(), headers)
    url = with_path_and_query(config.ping_url, "" if ok else "/fail", {"rid": run_id})
    return Ping(kind, "POST", url, json.dumps(facts).encode(), {"Content-Type": "application/json"})


def send(ping: Ping, timeout: float) -> bool:
    """Deliver one ping within ``timeout`` seconds, retried once; a failure is logged, never raised."""
    host = urlsplit(ping.url).hostname
    headers = {"User-Agent": f"email-sync/{__version__}", **ping.headers}
    deadline = time.monotonic() + timeout
    error = "no time left"
    for _ in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            status = outbound.request(ping.method, ping.url, ping.body, headers, total=left)
        except outbound.Unreachable as failure:
            error = str(failure)
            continue
        if 200 <= status < 300:
            log.info("ping_sent", ping=ping.kind, host=host, status=status)
            return True
        error = f"HTTP {status}"
    log.warning("ping_failed", ping=ping.kind, host=host, error=error, timeout=timeout)
    return False


class Pinger:
    """One run's pings, off when monitor.ping_url is empty."""

    def __init__(self, config: MonitorConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self.starting: threading.Thread | None = None

    @property
    def on(self) -> bool:
        return bool(self.config.ping_url)

    def start(self) -> None:
        """The start ping, in the background: the run does not wait for the monitor."""
        ping = start_ping(self.config, self.run_id) if self.on else None
        if ping is not None:
            self.starting = threading.Thread(
                target=send, args=(ping, self.config.ping_timeout), name="ping-start", daemon=True
            )
            self.starting.start()

    def finish(self, ok: bool, facts: dict[str, Any]) -> None:
        """The end ping, after the start ping (a monitor pairs them): at most ping_timeout more for each."""
        if not self.on:
            return
        if self.starting is not None:
            self.starting.join(self.config.ping_timeout)
        send(end_ping(self.config, self.run_id, ok, facts), self.config.ping_timeout)
