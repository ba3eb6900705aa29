"""Structured logging: one JSON object per line, to the journal when stdout is the journal, else to stdout.

``$JOURNAL_STREAM`` names the stream journald reads, which is how we know stdout is the journal and not a pipe or a
terminal. Then each line goes to journald's native socket instead, as MESSAGE with PRIORITY and fields of its own
(EMAIL_SYNC_EVENT, EMAIL_SYNC_RUN_ID, EMAIL_SYNC_USER_ID), so ``journalctl -u email-sync EMAIL_SYNC_USER_ID=42``
finds one user's history. The protocol is a few lines over a datagram socket, so no python-systemd (which needs
libsystemd headers to build into our virtualenv). If the socket refuses a line, it goes to stdout with a ``<N>``
priority prefix, which journald also understands. Every value passes the redactor, so a password or token that
slips into an exception message never reaches the log.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from emailsync import redaction
from emailsync.redaction import redact_and_truncate

# syslog priorities, as journald understands them in a <N> prefix.
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# journald splits lines over 48 KiB; no single field may come near that.
MAX_FIELD_CHARS = 2000
_LEADING_KEYS = ("timestamp", "level", "event", "run_id")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "email-sync"


def is_journal(stream: TextIO, env: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream that systemd announced in $JOURNAL_STREAM (device:inode)."""
    announced = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return announced == f"{info.st_dev}:{info.st_ino}"


def _redacted(value: Any, limit: int) -> Any:
    """A field's value with every string in it redacted and cut, however deep in lists and dicts (a list of users
    with their last errors, which a backend may have made of our token)."""
    if isinstance(value, str):
        return redact_and_truncate(value, limit)
    if isinstance(value, dict):
        return {key: _redacted(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, limit) for item in value]
    return value


def _redact_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in event.items():
        event[name] = _redacted(value, 20 * MAX_FIELD_CHARS if name == "exception" else MAX_FIELD_CHARS)
    return event


def _json_line(journal: bool) -> structlog.typing.Processor:
    """The JSON line; for the journal, with what the journal logger needs to send it natively."""

    def render(_: Any, __: str, event: MutableMapping[str, Any]) -> str | dict[str, Any]:
        first = {key: event.pop(key) for key in _LEADING_KEYS if key in event}  # what a reader scans for
        line = json.dumps(first | dict(event), default=str, ensure_ascii=False, separators=(",", ":"))
        if not journal:
            return line
        fields = {
            "EMAIL_SYNC_EVENT": first.get("event"),
            "EMAIL_SYNC_RUN_ID": first.get("run_id"),
            "EMAIL_SYNC_USER_ID": event.get("user_id"),
        }
        return {
            "line": line,
            "priority": PRIORITIES.get(first.get("level", "info"), 6),
            "fields": {name: str(value) for name, value in fields.items() if value is not None},
        }

    return render


def journal_fields(fields: dict[str, str]) -> bytes:
    """journald's native protocol: NAME=value lines; a value with a newline as NAME, length, bytes."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalLogger:
    """Sends each line to journald's native socket, falling back to ``<N>``-prefixed lines on ``stream``."""

    def __init__(self, stream: TextIO, socket_path: str) -> None:
        self.stream = stream
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket_path = socket_path

    def msg(self, line: str, priority: int, fields: dict[str, str]) -> None:
        datagram = journal_fields(
            {"MESSAGE": line, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": IDENTIFIER, **fields}
        )
        try:
            self.socket.sendto(datagram, self.socket_path)
        except OSError:  # too big for a datagram, or journald away: the stream still reaches the journal
            self.stream.write(f"<{priority}>{line}\n")
            self.stream.flush()

    log = debug = info = warning = error = critical = exception = fatal = msg


def configure(
    level: str = "info", secrets: Iterable[str] = (), stream: TextIO | None = None, journal_socket: str | None = None
) -> None:
    """Set up structlog for this process; called again once the config (level, secrets) is known.

    The journal's socket is JOURNAL_SOCKET unless given, looked up at each call (tests point it at their own).
    """
    redaction.know(secrets)
    out = sys.stdout if stream is None else stream
    renderer: structlog.typing.Processor
    logger: JournalLogger | structlog.WriteLogger
    if is_journal(out):
        renderer, logger = _json_line(journal=True), JournalLogger(out, journal_socket or JOURNAL_SOCKET)
    elif out.isatty():
        renderer, logger = structlog.dev.ConsoleRenderer(colors=False), structlog.WriteLogger(out)
    else:
        renderer, logger = _json_line(journal=False), structlog.WriteLogger(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            _redact_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: logger,  # one logger (one socket, one lock) for every thread
        cache_logger_on_first_use=False,
    )
