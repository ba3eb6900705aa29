"""The database URL in each form an admin copies from libpq's documentation, a Patroni or HA guide, or a standby's
primary_conninfo, turned into the URL SQLAlchemy reads; and the password it holds, in every spelling, for redaction.

A URL SQLAlchemy reads as it is (one host, or its own ``?host=h1:p1&host=h2:p2``) goes to it unchanged. The forms it
cannot read, a ``host:port`` list in the URI and a key=value connection string, are read by libpq itself (the same
parser psycopg2 connects with), so they mean exactly what libpq's documentation says; their parameters then reach
psycopg2 through SQLAlchemy's URL as query parameters, which it hands to libpq unchanged.

No message here quotes the URL or any part of it that may hold the password. SQLAlchemy and psycopg2 are imported
only to read a URL: the config module, and so this one, must import with the standard library alone (packaging
renders the shipped example files with a bare python3).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from emailsync.config.values import Invalid

if TYPE_CHECKING:
    from sqlalchemy import URL

POSTGRES_SCHEMES = ("postgresql", "postgres")
DRIVER = "postgresql+psycopg2"
# libpq's target_session_attrs (PostgreSQL 14 on) and load_balance_hosts (16 on): checked here, as libpq would
# only refuse them when connecting, in words that read like a network failure.
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
LOAD_BALANCE_HOSTS = ("disable", "random")
LOAD_BALANCE_LIBPQ = 160000
# A connection string starts with a keyword and "=" (libpq's own test for "not a URI").
_CONNINFO = re.compile(r"\s*[A-Za-z_]+\s*=")
_CONNINFO_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)")
_LIBPQ_KEY_REFUSED = re.compile(r'^(?:invalid URI query parameter: |invalid connection option )"(\w+)"$')


def is_conninfo(url: str) -> bool:
    """A libpq key=value connection string ("host=db1 dbname=app") rather than a URL."""
    return "://" not in url and bool(_CONNINFO.match(url))


def scheme(url: str) -> str:
    """The URL's scheme without its driver ("postgresql" of postgresql+psycopg2://); empty for no URL at all."""
    name, separator, _ = url.partition("://")
    return name.split("+")[0] if separator else ""


def is_postgres(url: str) -> bool:
    return is_conninfo(url) or scheme(url) in POSTGRES_SCHEMES


def sqlalchemy_url(url: str, libpq_version: int | None = None) -> URL:
    """The URL for create_engine, our driver spelled out (SQLAlchemy 2.1 would pick psycopg 3 for postgresql://),
    or Invalid saying what is wrong without showing the URL. A parameter the libpq in use lacks is named here, not
    refused by libpq as it connects; ``libpq_version`` stands in for psycopg2's (tests of an older one)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    if not is_postgres(url):
        try:
            return make_url(url)
        except (ArgumentError, ValueError):  # their messages quote the URL
            raise Invalid("not a valid database URL") from None
    parsed = None if is_conninfo(url) else _by_sqlalchemy(url)
    if parsed is None:
        parsed = _by_libpq(url)
    _check_parameters(parsed, libpq_version)
    return parsed


def _by_sqlalchemy(url: str) -> URL | None:
    """SQLAlchemy's reading of a URL with one host, as email-sync always read it; None for a host list."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(DRIVER + "://" + url.partition("://")[2])
    except (ArgumentError, ValueError):  # a host list with ports reads as a bad port
        return None
    return None if "," in (parsed.host or "") else parsed


def _by_libpq(url: str) -> URL:
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn
    from sqlalchemy import URL

    text = url if is_conninfo(url) else "postgresql://" + url.partition("://")[2]  # libpq knows no "+driver"
    try:
        found = parse_dsn(text)
    except ProgrammingError as error:
        raise Invalid(_libpq_refusal(str(error))) from None
    user, password, dbname = (found.pop(name, None) for name in ("user", "password", "dbname"))
    return URL.create(DRIVER, username=user, password=password, database=dbname, query=found)


def _libpq_refusal(message: str) -> str:
    """libpq's reason, without the part of the URL it quotes (which may be the password)."""
    reason = message.removeprefix("invalid dsn:").strip().splitlines()[0] if message.strip() else ""
    key = _LIBPQ_KEY_REFUSED.match(reason)
    if key and key[1] == "load_balance_hosts":
        return _load_balance_needs_newer_libpq(_libpq_version())
    if key:
        return f"libpq knows no connection parameter {key[1]}"
    # libpq quotes the URL (or the token it stopped at) last, and a word of a key=value string in between.
    parts = (reason.rpartition(': "')[0] or reason).split('"')
    said = '"'.join("…" if odd and len(part) > 1 else part for odd, part in ((i % 2, p) for i, p in enumerate(parts)))
    return f"not a valid database URL: {said} (libpq)"


def _load_balance_needs_newer_libpq(version: int) -> str:
    return (
        f"load_balance_hosts needs libpq 16 or later (this one is {version // 10000}.{version % 10000}), as on "
        "Debian 13; remove it, and libpq tries the hosts in the order written"
    )


def _check_parameters(url: URL, libpq_version: int | None) -> None:
    query = url.query
    for name, allowed in (("target_session_attrs", TARGET_SESSION_ATTRS), ("load_balance_hosts", LOAD_BALANCE_HOSTS)):
        if name in query and _one(query, name) not in allowed:
            raise Invalid(f"{name} must be one of {', '.join(allowed)}")
    if "load_balance_hosts" in query:
        version = libpq_version or _libpq_version()
        if version < LOAD_BALANCE_LIBPQ:
            raise Invalid(_load_balance_needs_newer_libpq(version))
    hosts, ports = _hosts_and_ports(url)
    for port in ports:
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise Invalid("a port of the database URL is not a number from 1 to 65535")
    if len(ports) > 1 and len(hosts) != len(ports):
        raise Invalid(f"the database URL lists {len(hosts)} hosts but {len(ports)} ports")


def _libpq_version() -> int:
    """The version of the libpq psycopg2 connects with: Debian's libpq5 in the package, so its release's."""
    from psycopg2.extensions import libpq_version

    version: int = libpq_version()
    return version


def _one(query: object, name: str) -> str:
    value = query[name]  # type: ignore[index]
    return value if isinstance(value, str) else ",".join(value)


def _hosts_and_ports(url: URL) -> tuple[list[str], list[str]]:
    """The hosts and ports, in either of SQLAlchemy's query spellings: ?host=h1:p1&host=h2:p2 (repeated), or
    ?host=h1,h2&port=p1,p2 (libpq's lists, which is also what a host list in the URI becomes)."""
    query = url.query
    given = query.get("host")
    if isinstance(given, tuple):
        if "port" in query:
            raise Invalid("write the hosts as ?host=h1:p1&host=h2:p2, or as ?host=h1,h2&port=p1,p2, not both")
        if any(host.count(":") > 1 for host in given):  # SQLAlchemy splits h:p at every ":"
            raise Invalid("an IPv6 address goes in the URI's host list, as postgresql://user@[::1]:5432,db2:5432/app")
        pairs = [host.rpartition(":") if ":" in host else (host, "", "") for host in given]
        return [host for host, _, _ in pairs], [port for _, _, port in pairs]
    hosts = given.split(",") if given else [url.host or ""]
    ports = _one(query, "port").split(",") if "port" in query else [str(url.port or "")]
    return hosts, ports


def password_spellings(url: str) -> list[str]:
    """The password as written (so as a message may quote it) and as decoded, from wherever the URL holds it: after
    "user:", in a ?password= parameter, or as a key=value string's password (quoted or not)."""
    written: set[str] = set()
    if is_conninfo(url):
        found = _CONNINFO_PASSWORD.search(url)
        if found and found[1]:
            written.add(found[1])
            written.add(re.sub(r"\\(.)", r"\1", found[1].strip("'")))
    else:
        password = url_password(url)
        if password:
            written |= {password, password.partition("@")[0]}  # as SQLAlchemy reads it: to the first "@"
        query = url.partition("?")[2]
        written |= {value for name, _, value in (p.partition("=") for p in query.split("&")) if name == "password"}
    written.discard("")
    return sorted(written | {unquote(w) for w in written})


def url_password(url: str) -> str | None:
    """The password of a database URL as written: everything between "scheme://user:" and the last "@".

    Reading to the last "@" finds the whole of a password whose "@" was not percent-encoded, where SQLAlchemy
    would cut it at its first "@" and take the rest for the host (and the port, from a ":" after it).
    """
    _, separator, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    _, colon, password = userinfo.partition(":")
    return password if separator and at and colon and password else None
