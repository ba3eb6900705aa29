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

import base64
import json
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

# syslog priorities, as journald understands them in a <N> prefix.
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# journald splits lines over 48 KiB; no single field may come near that.
MAX_FIELD_CHARS = 2000
# Up to the last "@" before a "/" or white space, so a password with an unencoded "@" is covered whole.
_URL_PASSWORD = re.compile(r"://([^/\s:@]*):[^/\s]*@")  # starts at the literal "://": linear on long text
# A password as a parameter: in a libpq key=value string (quoted or not) or a URL's ?password= (libpq reads both).
_PARAMETER_PASSWORD = re.compile(r"\b(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&'\"]+)", re.IGNORECASE)
# Characters: a prefix this long of a secret (a backend echoing it cut short, or a cut of ours through it), or a
# piece this long of its base64 form, is redacted; shorter ones are not, as they turn up in ordinary text.
MIN_PARTIAL = 8
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LEADING_KEYS = ("timestamp", "level", "event", "run_id")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "email-sync"


def _hex(value: int, digits: int) -> str:
    """A pattern for ``value`` in hexadecimal, either case."""
    return "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in f"{value:0{digits}X}")


def _spellings(char: str) -> tuple[re.Pattern[str], ...]:
    """Each way an echo may write one character: as is, percent-encoded (%2F or %2f; + for a space, as a form
    does), JSON-escaped (\\" \\/ \\n, \\u00e9, a surrogate pair past U+FFFF)."""
    forms = [re.escape(char), "".join(f"%{_hex(byte, 2)}" for byte in char.encode("utf-8", "surrogatepass"))]
    if char == " ":
        forms.append(r"\+")
    if char in _JSON_ESCAPES:
        forms.append(re.escape(_JSON_ESCAPES[char]))
    units = char.encode("utf-16-be", "surrogatepass")
    forms.append("".join(rf"\\u{_hex(int.from_bytes(units[i : i + 2]), 4)}" for i in range(0, len(units), 2)))
    return tuple(re.compile(form) for form in forms)


def _base64_pieces(secret: str) -> tuple[str, ...]:
    """What a secret becomes inside any base64 text (HTTP Basic's user:password, the secret alone): for each of
    the three offsets it may start at, the characters that depend on its bytes only, in both alphabets."""
    data, pieces = secret.encode("utf-8", "surrogatepass"), set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        piece = encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
        pieces |= {piece, piece.replace("+", "-").replace("/", "_")}
    return tuple(sorted((p for p in pieces if len(p) >= MIN_PARTIAL), key=len, reverse=True))


@dataclass(frozen=True)
class _Secret:
    """A secret compiled for redaction: its characters' spellings, a pattern for its first MIN_PARTIAL characters
    in any mix of them, and its base64 pieces."""

    chars: tuple[tuple[re.Pattern[str], ...], ...]
    head: re.Pattern[str]
    base64: tuple[str, ...]

    @classmethod
    def of(cls, secret: str) -> _Secret:
        chars = tuple(_spellings(c) for c in secret)
        head = "".join("(?:" + "|".join(p.pattern for p in spellings) + ")" for spellings in chars[:MIN_PARTIAL])
        return cls(chars, re.compile(head), _base64_pieces(secret))

    def end_of_prefix(self, text: str, start: int) -> int:
        """Where the longest prefix of the secret that starts at ``start`` ends, however each character is spelled.

        All spellings are followed at once (one of them may be a prefix of another: a raw backslash and the JSON
        escape of one), so the choice made for one character cannot cut the match short.
        """
        ends, longest = {start}, start
        for spellings in self.chars:
            ends = {match.end() for at in ends for p in spellings if (match := p.match(text, at))}
            if not ends:
                break
            longest = max(ends)
        return longest

    def redact(self, text: str) -> str:
        shown, at = [], 0
        while match := self.head.search(text, at):
            shown.append(text[at : match.start()] + "***")
            at = max(self.end_of_prefix(text, match.start()), match.end())
        text = "".join(shown) + text[at:]
        for piece in self.base64:
            text = text.replace(piece, "***")
        return text


_secrets: tuple[_Secret, ...] = ()


def redact(text: str) -> str:
    """The text with every known secret, and any password inside a URL, replaced by ***.

    A secret is found in every spelling an echo of it can take: as is, percent-encoded, JSON-escaped, or a mix;
    cut short, from its first MIN_PARTIAL characters on (all of a shorter one); and inside base64.
    """
    for secret in _secrets:
        text = secret.redact(text)
    return _PARAMETER_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"://\1:***@", text))


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
    global _secrets
    _secrets = tuple(_Secret.of(s) for s in sorted({s for s in secrets if s}, key=len, reverse=True))
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
