"""Structured logging: one JSON object per line on stdout, priority-prefixed when stdout is the journal.

journald turns a leading ``<N>`` into the entry's PRIORITY (so ``journalctl -p warning`` works) and strips it;
``$JOURNAL_STREAM`` names the stream it reads, which is how we know stdout is the journal and not a pipe or a
terminal. Every value passes the redactor, so a password or token that slips into an exception message never
reaches the log.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities, as journald understands them in a <N> prefix.
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# journald splits lines over 48 KiB; no single field may come near that.
MAX_FIELD_CHARS = 2000
_URL_PASSWORD = re.compile(r"://([^/\s:@]*):[^/\s@]*@")  # starts at the literal "://": linear on long text
_LEADING_KEYS = ("timestamp", "level", "event", "run_id")
_secrets: tuple[str, ...] = ()


def redact(text: str) -> str:
    """The text with every known secret, and any password inside a URL, replaced by ***."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"://\1:***@", text)


def redact_and_truncate(text: str, limit: int) -> str:
    """Redacted, then cut to ``limit`` characters; only a margin past the cut is searched, so a 10 MB body costs
    no more than a short one, and a secret straddling the cut is still caught."""
    shown = redact(text[: limit + 512])[:limit]
    return shown if len(text) <= limit else f"{shown}... [{len(text) - limit} more chars]"


def is_journal(stream: TextIO, env: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream that systemd announced in $JOURNAL_STREAM (device:inode)."""
    announced = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return announced == f"{info.st_dev}:{info.st_ino}"


def _redact_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = redact_and_truncate(value, 20 * MAX_FIELD_CHARS if name == "exception" else MAX_FIELD_CHARS)
    return event


def _json_line(journal: bool) -> structlog.typing.Processor:
    def render(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
        first = {key: event.pop(key) for key in _LEADING_KEYS if key in event}  # what a reader scans for
        line = json.dumps(first | dict(event), default=str, ensure_ascii=False, separators=(",", ":"))
        return f"<{PRIORITIES.get(first.get('level', 'info'), 6)}>{line}" if journal else line

    return render


def configure(level: str = "info", secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Set up structlog for this process; called again once the config (level, secrets) is known."""
    global _secrets
    _secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    out = sys.stdout if stream is None else stream
    renderer: structlog.typing.Processor
    if out.isatty() and not is_journal(out):
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = _json_line(is_journal(out))
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
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
