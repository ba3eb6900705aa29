"""Secrets out of every text we show or store: log lines, alert payloads, errors in the state tables.

A module of its own at the bottom of the layers, because the journal, the tables and the alerts all need it, and
none of them should import another to get it. The secrets are the ones the configuration names (``know``), found in
every spelling an echo of them can take, plus any password inside a URL or a libpq parameter.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Up to the last "@" before a "/" or white space, so a password with an unencoded "@" is covered whole.
_URL_PASSWORD = re.compile(r"://([^/\s:@]*):[^/\s]*@")  # starts at the literal "://": linear on long text
# A password as a parameter: in a libpq key=value string (quoted or not) or a URL's ?password= (libpq reads both).
_PARAMETER_PASSWORD = re.compile(r"\b(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&'\"]+)", re.IGNORECASE)
# Characters: a prefix this long of a secret (a backend echoing it cut short, or a cut of ours through it), or a
# piece this long of its base64 form, is redacted; shorter ones are not, as they turn up in ordinary text.
MIN_PARTIAL = 8
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


def know(secrets: Iterable[str]) -> None:
    """Redact these secrets from now on, in every thread: called once the configuration is loaded."""
    global _secrets
    _secrets = tuple(_Secret.of(s) for s in sorted({s for s in secrets if s}, key=len, reverse=True))


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
