"""Why the database failed us, and whether the next timer tick can do better.

A refused connection reaches us from libpq as the server's (or PgBouncer's) message alone, without its SQLSTATE,
so each rule matches the message as well as the code. A configuration failure (exit 78) names the key to fix: a
timer retrying a wrong password forever helps nobody. Whatever breaks a connection and matches no rule stays
temporary (exit 75): that is what networks and restarting servers mostly do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from emailsync.errors import ConfigError, DatabaseUnavailable, EmailSyncError
from emailsync.redaction import redact

URL = "the database URL"  # a rule about the URL names the key (or credential) the URL came from
STANDBY = (
    "the server is a read-only hot standby, not the primary; a failover may be under way, else the URL must reach "
    "the primary: list every server with target_session_attrs=read-write, as in "
    "postgresql://user@db1:5432,db2:5432/app?target_session_attrs=read-write"
)


@dataclass(frozen=True)
class Rule:
    sqlstate: str  # the condition's SQLSTATE; empty for a failure on the client's side
    message: str  # a regular expression on the driver's message, for when the SQLSTATE is not given
    temporary: bool
    meaning: str
    key: str = URL


RULES: tuple[Rule, ...] = (
    # Configuration (78): retrying never helps.
    Rule(
        "",  # 22023 is any invalid parameter value: only this message is about the time zone
        r'invalid value for parameter "TimeZone"',
        False,
        "PostgreSQL knows no such time zone",
        key="users.last_sync_timezone",
    ),
    Rule("28P01", r"password authentication failed|SASL authentication failed", False, "the password was refused"),
    Rule("28000", r'role ".+" does not exist|"trust" authentication failed', False, "the role does not exist"),
    Rule("28000", r"no pg_hba\.conf entry|pg_hba\.conf rejects", False, "the server's pg_hba.conf refuses this login"),
    Rule("", r"no password supplied", False, "the server asks for a password and the URL has none"),
    Rule("3D000", r'database ".+" does not exist|no such database', False, "the database does not exist"),
    Rule(
        "42501",
        r"permission denied",
        False,
        "the role lacks a privilege email-sync needs (CONNECT; SELECT and UPDATE on the users table)",
    ),
    Rule(
        "08P01",
        r"unsupported startup parameter",
        False,
        "a connection pooler refused a connection parameter of the URL (email-sync itself sends none)",
    ),
    Rule(
        "",  # 42704 is any undefined object: only this message is about a setting the URL asked for
        r"unrecognized configuration parameter|invalid value for parameter",
        False,
        "a server setting (options=) in the URL is wrong",
    ),
    Rule(
        "",
        r"invalid port number|invalid integer value .* \"port\"|Name or service not known|invalid dsn|"
        r"invalid connection option|invalid \w+ value: ",
        False,
        "the host, port or a connection option is wrong",
    ),
    Rule(
        "",  # libpq, when target_session_attrs turned every host away
        r"session is not read-only|server is not in hot standby mode",
        False,
        "target_session_attrs asks for a standby or a read-only server, but email-sync writes: use read-write",
    ),
    Rule("", r"certificate verify failed|does not support SSL|root certificate file", False, "TLS (sslmode) is wrong"),
    Rule("", r"unable to open database file", False, "the SQLite file cannot be opened (missing directory?)"),
    Rule("", r"attempt to write a readonly database", False, "the SQLite file is read-only"),
    # Temporary (75): the next timer tick may succeed.
    Rule(
        "53300",
        r"too many clients|remaining connection slots|no more connections allowed|too many connections",
        True,
        "too many connections",
    ),
    # A write refused (25006), or libpq finding no host but standbys for target_session_attrs=read-write or primary.
    Rule("25006", r"read-only transaction|session is read-only|server is in hot standby mode", True, STANDBY),
    Rule("57P03", r"the database system is (starting|shutting|in recovery|not yet)", True, "the server is not ready"),
    Rule("57P01", r"terminating connection due to administrator command", True, "an administrator ended it"),
    Rule("57014", r"canceling statement due to statement timeout", True, "database.statement_timeout passed"),
    Rule("55P03", r"lock timeout|could not obtain lock", True, "a lock was not granted within the statement timeout"),
    Rule("", r"database is locked", True, "another process holds the SQLite write lock"),
)


def describe(error: SQLAlchemyError) -> str:
    """The driver's message, first line, redacted: never the statement or its parameters (emails)."""
    original = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    message = str(original).strip().splitlines()
    return redact(message[0] if message else type(original).__name__)


def rule_for(error: DBAPIError) -> Rule | None:
    sqlstate = getattr(error.orig, "pgcode", None) or ""
    message = str(error.orig)
    for rule in RULES:
        if (sqlstate and sqlstate == rule.sqlstate) or re.search(rule.message, message):
            return rule
    return None


def classify(error: DBAPIError, url_from: str) -> EmailSyncError | None:
    """The failure to report, or None for an error that is ours (a bug in a statement), not the database's."""
    rule = rule_for(error)
    if rule is None:
        return DatabaseUnavailable(f"database unavailable: {describe(error)}") if _connection(error) else None
    if rule.meaning is STANDBY:
        return on_standby(url_from)
    if rule.temporary:
        return DatabaseUnavailable(f"database unavailable ({rule.meaning}): {describe(error)}")
    key = url_from if rule.key == URL else rule.key
    code = f" [{rule.sqlstate}]" if rule.sqlstate else ""
    return ConfigError(f"{key}: {rule.meaning}{code}: {describe(error)}")


def on_standby(url_from: str) -> DatabaseUnavailable:
    """The one line for a URL that reached only a hot standby: temporary, as a failover may be under way."""
    return DatabaseUnavailable(f"{url_from}: {STANDBY}")


def _connection(error: DBAPIError) -> bool:
    return isinstance(error, OperationalError) or error.connection_invalidated
