"""Parsers of configuration values: each takes what TOML or the environment gave and returns the typed value, or
raises Invalid with what is wrong; the caller names the key and the file."""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from typing import Any, Final, Literal
from urllib.parse import SplitResult, quote, urlsplit

from emailsync.systemd import timespan

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_TIMEZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
_LOG_LEVELS = ("debug", "info", "warning", "error")
# A host name's label once in ASCII: letters, digits, hyphens, and the underscore that container names carry.
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
# Characters that IDNA 2003 (Python's codec, which the resolver and TLS use) maps away and IDNA 2008 (what
# registries use) keeps: the same name would reach another host. Their ASCII (xn--) form is unambiguous.
_IDNA_DEVIATIONS = "\u00df\u03c2\u200c\u200d"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Longer is a typo, and past it the waits and timeouts built from a duration overflow (int(inf), Event.wait).
MAX_DURATION = 365 * 86400.0
# PostgreSQL takes statement_timeout as an int of milliseconds, where 0 means no timeout at all.
_STATEMENT_TIMEOUT_MS = (1, 2**31 - 1)


class Invalid(ValueError):
    """A value is wrong; the caller adds which key and which file."""


def shown(value: Any) -> str:
    """repr() for an error message: an integer of 4300+ digits (0xfff... in TOML) makes repr() itself raise."""
    try:
        return repr(value)
    except ValueError:
        return f"a {type(value).__name__} too large to show"


def duration(value: Any) -> float:
    """Seconds from a number of seconds or a systemd time span ("90s", "5min", "2h 30min", "1.5h", "1w"):
    operators write durations the way systemd.time(7) does, and copy them between unit files and this config."""
    usage = "must be a duration like 30s, 5min or 2h 30min (systemd.time(7))"
    if isinstance(value, bool):
        raise Invalid(usage)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            seconds = float("inf")
    elif isinstance(value, str):
        try:
            seconds = timespan.parse(value) / timespan.USEC_PER_SEC
        except ValueError:
            raise Invalid(f"{usage}, got {shown(value)}") from None
    else:
        raise Invalid(usage)
    if not 0 < seconds <= MAX_DURATION:
        raise Invalid(f"must be a positive duration of at most 365d, got {shown(value)}")
    return seconds


def duration_or_derived(value: Any) -> float:
    """A duration, or 0 (the number or "0"): the key's value is then derived from other keys."""
    return 0.0 if value in (0, "0") and not isinstance(value, bool) else duration(value)


def statement_timeout(value: Any) -> float:
    seconds = duration(value)
    low, high = _STATEMENT_TIMEOUT_MS
    if not low <= int(seconds * 1000) <= high:
        raise Invalid(f"must be between 1ms and {high // 86_400_000}d (PostgreSQL's limit), got {shown(value)}")
    return seconds


def integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            try:
                value = int(value)
            except ValueError:  # more digits than int() converts: far out of range anyway
                raise Invalid(f"must be between {minimum} and {maximum}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {shown(value)}")
        if not minimum <= value <= maximum:
            raise Invalid(f"must be between {minimum} and {maximum}, got {shown(value)}")
        return value

    return parse


def statuses(value: Any) -> tuple[int, ...]:
    """HTTP statuses from a TOML list ([410, 422]) or, from the environment, a comma-separated string."""
    usage = "must be a list of HTTP statuses from 400 to 599, like [410, 422]"
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list):
        raise Invalid(f"{usage}, got {shown(value)}")
    parse = integer(400, 599)
    try:
        return tuple(sorted({parse(one) for one in value}))
    except Invalid as error:
        raise Invalid(f"{usage}: {error}") from None


AUTO: Final = "auto"


def concurrency(value: Any) -> int | Literal["auto"]:
    """A number of calls in flight, or "auto": found from the backend's answers (emailsync/sync/limiter.py)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return integer(1, 1024)(value)
    except Invalid as error:
        raise Invalid(f'must be "auto" or an integer between 1 and 1024, got {shown(value)}') from error


def rate(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Invalid(f"must be a number of requests per second, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise Invalid(f"must be a number >= 0 (0 = unlimited), got {shown(value)}")
    try:
        rate = float(value)
    except OverflowError:  # an int past float's range
        raise Invalid("must be a number >= 0 (0 = unlimited), got a number too large") from None
    if 0 < rate < 1 / MAX_DURATION:  # the wait between two requests would overflow, like a huge duration
        raise Invalid(f"must be 0 (unlimited) or at least one request per 365d, got {shown(value)}")
    return rate


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {shown(value)}")
    if "\x00" in value:
        raise Invalid("must not contain NUL characters")
    return value


def identifier(value: Any) -> str:
    given = text(value)
    if not _IDENTIFIER.fullmatch(given):
        raise Invalid(f"must be an SQL name like users or app.users, got {given!r}")
    return given


def timezone(value: Any) -> str:
    """An IANA zone name like UTC or Europe/Berlin; whether the database knows it is checked on connecting."""
    given = text(value).strip()
    if not _TIMEZONE.fullmatch(given):
        raise Invalid(f"must be a time zone name like UTC or America/New_York, got {given!r}")
    return given


def url_path(value: Any) -> str:
    given = text(value)
    if not given.startswith("/") or any(c in given for c in "?# "):
        raise Invalid(f"must be a URL path starting with '/', got {given!r}")
    return _request_path(given)


def _request_path(path: str) -> str:
    """The path as it goes on the request line: printable ASCII as written, any other character percent-encoded as
    UTF-8 (as browsers and curl send it). Control characters would end the request line early or forge a header."""
    if any(c < " " or c == "\x7f" for c in path):
        raise Invalid("must not contain control characters")  # nor show the path: a webhook's may be its key
    if _BAD_ESCAPE.search(path):
        raise Invalid("has a '%' that does not start a %XX escape (write a literal % as %25)")
    try:
        return quote(path, safe=string.punctuation)
    except UnicodeEncodeError:  # a lone surrogate: what the environment makes of bytes that are not UTF-8
        raise Invalid("must be valid UTF-8") from None


def _ascii_host(host: str) -> str:
    """The host as DNS and TLS get it: an IP address, or a name whose labels are ASCII (IDNA: a name in another
    script becomes its xn-- form)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 address's scope (fe80::1%eth0)
        return host
    except ValueError:
        pass
    if any(c in _IDNA_DEVIATIONS for c in host):
        raise Invalid(f"has a host name that IDNA 2003 and 2008 read apart: write it in its xn-- form, got {host!r}")
    try:
        ascii_host = host.encode("idna").decode("ascii")
        for label in ascii_host.rstrip(".").split("."):
            if not _LABEL.fullmatch(label) or (label[:4].lower() == "xn--" and not label.encode().decode("idna")):
                raise UnicodeError(label)
    except UnicodeError:  # the codec's (a label empty or over 63 characters, a forbidden character), or ours above
        raise Invalid(f"must have a valid host name (IDNA), got {host!r}") from None
    return ascii_host


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- urlsplit validates the port only when asked
    except ValueError:  # its message may quote the netloc, credentials included
        raise Invalid("must be an http(s) URL with a valid host and port") from None
    return parts


def http_url(value: Any) -> str:
    """An http(s) URL as requests go to it: its host in ASCII (IDNA) and its path percent-encoded, as url_path."""
    given = text(value).rstrip("/")
    parts = _split(given)
    # Before any message that shows the URL: credentials or a token in the query must not be echoed.
    if parts.username or parts.password or parts.query or parts.fragment:
        raise Invalid("must not contain credentials, a query or a fragment (the token goes in backend.token_file)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"must be an http:// or https:// URL, got {given!r}")
    if any(c < " " or c == "\x7f" for c in given):
        raise Invalid("must not contain control characters")
    host, path = _ascii_host(parts.hostname), _request_path(parts.path)
    if host == parts.hostname and path == parts.path:
        return given
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
    return f"{parts.scheme}://{netloc}{path}"


def optional_http_url(value: Any) -> str:
    return http_url(value) if text(value) else ""


def ping_url(value: Any) -> str:
    """A monitoring URL, query string allowed (an Uptime Kuma push URL has one); empty: off."""
    given = text(value).strip()
    if not given:
        return ""
    parts = _split(given)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise Invalid("must be an http:// or https:// URL without credentials")
    if parts.fragment:
        raise Invalid("must not have a #fragment")
    return given


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        given = text(value).strip().lower()
        if given not in choices:
            raise Invalid(f"must be one of {', '.join(choices)}, got {shown(value)}")
        return given

    return parse


log_level = one_of(*_LOG_LEVELS)
