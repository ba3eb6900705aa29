"""When and what to tell systemd: readiness, status, watchdog pings and shutdown. sdnotify sends the messages.

A Type=notify service talks to systemd through datagrams sent to $NOTIFY_SOCKET. This module keeps the policy: which
message when, how often progress pings the watchdog, the watchdog systemd armed (sdnotify reads neither WATCHDOG_USEC
nor WATCHDOG_PID), a STATUS that stays one ASCII line (sdnotify encodes with latin-1). Delivery is best effort: a
notification that cannot be sent is logged and dropped, never raised, so a systemd hiccup cannot take the sync down
with it. sdnotify runs with debug=True so that it raises instead of swallowing the failure we log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sdnotify
import structlog

_log = structlog.get_logger(__name__)

_STATUS_MAX_CHARS = 200
_MAX_PROGRESS_GAP = 1.0  # seconds; also keeps the status line fresh without a watchdog
_LINE_BREAKS_TO_SPACES = str.maketrans({"\n": " ", "\r": " "})


@dataclass(frozen=True)
class WatchdogSettings:
    """The watchdog systemd armed for us (WatchdogSec=): a service that goes a whole interval without a ping is
    killed."""

    interval: float  # seconds, the full WATCHDOG_USEC

    @property
    def ping_within(self) -> float:
        """The watchdog rule, the one place it is stated: ping at least every half interval, as
        sd_watchdog_enabled(3) asks, so that a ping late by as much again still comes before systemd gives up."""
        return self.interval / 2

    def allows(self, silence: float) -> bool:
        """Whether work that may go ``silence`` seconds without progress, and so without a ping, keeps the rule."""
        return silence < self.ping_within


def watchdog_from_env(env: Mapping[str, str], pid: int) -> WatchdogSettings | None:
    """Read the watchdog systemd set up, or None when there is none meant for process `pid`."""
    if not env.get("WATCHDOG_USEC"):
        return None
    # WATCHDOG_PID names the process the watchdog is for; the variables may have been inherited by a child (or come
    # from a parent) that must not ping on its behalf.
    if "WATCHDOG_PID" in env and _positive_int(env, "WATCHDOG_PID") != pid:
        return None
    usec = _positive_int(env, "WATCHDOG_USEC")
    if usec is None:
        return None
    return WatchdogSettings(interval=usec / 1_000_000)


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    """env[name] as a positive integer; None (with a warning) when it is anything else."""
    raw = env[name]
    if raw.isascii() and raw.isdigit() and int(raw) > 0:
        return int(raw)
    _log.warning("watchdog_env_invalid", variable=name, value=raw)
    return None


def _one_ascii_line(text: str) -> str:
    """STATUS= is one line of free text: keep it one short ASCII line (no injected fields)."""
    short = text[:_STATUS_MAX_CHARS]  # every later step maps one character to one character
    return short.translate(_LINE_BREAKS_TO_SPACES).encode("ascii", "replace").decode("ascii")


class _Systemd:
    """sdnotify's client for $NOTIFY_SOCKET, connected on the first message and again after a failed one (a
    connected datagram socket stays tied to the receiver it found, even after that one is gone).

    Its socket is made non-blocking, so a full receive queue in systemd raises instead of stalling the work loop.
    """

    def __init__(self) -> None:
        self._client: sdnotify.SystemdNotifier | None = None

    def send(self, message: str) -> None:
        """Raises OSError when the message could not be sent."""
        if self._client is None:
            client = sdnotify.SystemdNotifier(debug=True)
            client.socket.setblocking(False)
            self._client = client
        try:
            self._client.notify(message)
        except OSError:
            self._client.socket.close()
            self._client = None
            raise


class Notifier:
    """Best-effort sd_notify client; a cheap no-op when not started by systemd."""

    def __init__(
        self,
        enabled: bool,
        watchdog: WatchdogSettings | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``enabled``: whether to notify at all; sdnotify sends to this process's $NOTIFY_SOCKET."""
        self._systemd = _Systemd() if enabled else None
        self._watchdog = watchdog
        self._clock = clock
        # Half the time the rule allows keeps the pings inside it even when the progress calls themselves arrive a
        # little irregularly.
        self._progress_gap = (
            min(_MAX_PROGRESS_GAP, watchdog.ping_within / 2) if watchdog is not None else _MAX_PROGRESS_GAP
        )
        self._last_progress: float | None = None

    @classmethod
    def from_env(cls, pid: int | None = None) -> Notifier:
        """The notifier systemd asked for through this process's environment."""
        pid = os.getpid() if pid is None else pid
        return cls(bool(os.environ.get("NOTIFY_SOCKET")), watchdog_from_env(os.environ, pid))

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify, i.e. whether systemd is listening."""
        return self._systemd is not None

    @property
    def watchdog(self) -> WatchdogSettings | None:
        """The watchdog that progress() pings, if any."""
        return self._watchdog

    def ready(self) -> None:
        """Tell systemd start-up is done (READY=1 must travel alone in its datagram)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Show `text` as the service status (e.g. in systemctl status)."""
        self._send("STATUS=" + _one_ascii_line(text))

    def stopping(self) -> None:
        """Tell systemd we are shutting down on purpose."""
        self._send("STOPPING=1")

    def progress(self, status_text: str) -> None:
        """Record real progress: ping the watchdog and update the status, rate-limited.

        The work loop may call this thousands of times a second, so at most one datagram goes out per gap; the first
        call always sends.
        """
        if not self.enabled:
            return
        now = self._clock()
        if self._last_progress is not None and now - self._last_progress < self._progress_gap:
            return
        self._last_progress = now
        status = "STATUS=" + _one_ascii_line(status_text)
        self._send(status if self._watchdog is None else "WATCHDOG=1\n" + status)

    def _send(self, message: str) -> None:
        if self._systemd is None:
            return
        try:
            self._systemd.send(message)
        except OSError as exc:
            _log.warning("notify_failed", error=str(exc))
