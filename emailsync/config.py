"""Loading and validating the configuration: a TOML file, overridden by EMAIL_SYNC_<SECTION>_<KEY> variables.

Every key is declared once in KEYS (type, default, meaning); the file, the environment and the documentation all
go through that table, so a key cannot be accepted in one place and unknown in another. Secrets (the database URL
and the backend token) are read from files or systemd credentials and never echoed in an error.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from emailsync import timespan
from emailsync.errors import ConfigError

DEFAULT_PATH = "/etc/email-sync/email-sync.toml"
ENV_PREFIX = "EMAIL_SYNC_"
DATABASE_URL_CREDENTIAL = "database-url"
BACKEND_TOKEN_CREDENTIAL = "backend-token"
CREDSTORE = "/etc/credstore"  # where email-sync.service's LoadCredential= finds email-sync.<credential>

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_TIMEZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
_LOG_LEVELS = ("debug", "info", "warning", "error")
# Longer is a typo, and past it the waits and timeouts built from a duration overflow (int(inf), Event.wait).
MAX_DURATION = 365 * 86400.0
# PostgreSQL takes statement_timeout as an int of milliseconds, where 0 means no timeout at all.
_STATEMENT_TIMEOUT_MS = (1, 2**31 - 1)


class _Invalid(ValueError):
    """A value is wrong; the caller adds which key and which file."""


def _shown(value: Any) -> str:
    """repr() for an error message: an integer of 4300+ digits (0xfff... in TOML) makes repr() itself raise."""
    try:
        return repr(value)
    except ValueError:
        return f"a {type(value).__name__} too large to show"


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a systemd time span ("90s", "5min", "2h 30min", "1.5h", "1w"):
    operators write durations the way systemd.time(7) does, and copy them between unit files and this config."""
    usage = "must be a duration like 30s, 5min or 2h 30min (systemd.time(7))"
    if isinstance(value, bool):
        raise _Invalid(usage)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            seconds = float("inf")
    elif isinstance(value, str):
        try:
            seconds = timespan.parse(value) / timespan.USEC_PER_SEC
        except ValueError:
            raise _Invalid(f"{usage}, got {_shown(value)}") from None
    else:
        raise _Invalid(usage)
    if not 0 < seconds <= MAX_DURATION:
        raise _Invalid(f"must be a positive duration of at most 365d, got {_shown(value)}")
    return seconds


def _statement_timeout(value: Any) -> float:
    seconds = parse_duration(value)
    low, high = _STATEMENT_TIMEOUT_MS
    if not low <= int(seconds * 1000) <= high:
        raise _Invalid(f"must be between 1ms and {high // 86_400_000}d (PostgreSQL's limit), got {_shown(value)}")
    return seconds


def _integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            try:
                value = int(value)
            except ValueError:  # more digits than int() converts: far out of range anyway
                raise _Invalid(f"must be between {minimum} and {maximum}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_shown(value)}")
        if not minimum <= value <= maximum:
            raise _Invalid(f"must be between {minimum} and {maximum}, got {_shown(value)}")
        return value

    return parse


def _rate(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(f"must be a number of requests per second, got {_shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise _Invalid(f"must be a number >= 0 (0 = unlimited), got {_shown(value)}")
    try:
        rate = float(value)
    except OverflowError:  # an int past float's range
        raise _Invalid("must be a number >= 0 (0 = unlimited), got a number too large") from None
    if 0 < rate < 1 / MAX_DURATION:  # the wait between two requests would overflow, like a huge duration
        raise _Invalid(f"must be 0 (unlimited) or at least one request per 365d, got {_shown(value)}")
    return rate


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_shown(value)}")
    if "\x00" in value:
        raise _Invalid("must not contain NUL characters")
    return value


def _identifier(value: Any) -> str:
    text = _text(value)
    if not _IDENTIFIER.fullmatch(text):
        raise _Invalid(f"must be an SQL name like users or app.users, got {text!r}")
    return text


def _timezone(value: Any) -> str:
    """An IANA zone name like UTC or Europe/Berlin; whether the database knows it is checked on connecting."""
    text = _text(value).strip()
    if not _TIMEZONE.fullmatch(text):
        raise _Invalid(f"must be a time zone name like UTC or America/New_York, got {text!r}")
    return text


def _path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or any(c in text for c in "?# "):
        raise _Invalid(f"must be a URL path starting with '/', got {text!r}")
    return text


def _http_url(value: Any) -> str:
    text = _text(value).rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- urlsplit validates the port only when asked
    except ValueError:  # its message may quote the netloc, credentials included
        raise _Invalid("must be an http(s) URL with a valid host and port") from None
    # Before any message that shows the URL: credentials or a token in the query must not be echoed.
    if parts.username or parts.password or parts.query or parts.fragment:
        raise _Invalid("must not contain credentials, a query or a fragment (the token goes in backend.token_file)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"must be an http:// or https:// URL, got {text!r}")
    return text


def _optional_http_url(value: Any) -> str:
    return _http_url(value) if _text(value) else ""


def _log_level(value: Any) -> str:
    text = _text(value).lower()
    if text not in _LOG_LEVELS:
        raise _Invalid(f"must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return text


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.name}".upper()


REQUIRED = object()
T = TypeVar("T")

KEYS: tuple[Key, ...] = (
    Key(
        "database",
        "url",
        _text,
        "",
        "SQLAlchemy URL of the app's database (postgresql://... or sqlite:///...). "
        "Prefer url_file or the database-url credential: it holds a password.",
        secret=True,
    ),
    Key("database", "url_file", _text, "", "File holding the database URL (mode 0600)."),
    Key("database", "connect_timeout", parse_duration, 10.0, "Give up connecting to the database after this."),
    Key("database", "statement_timeout", _statement_timeout, 30.0, "PostgreSQL statement_timeout for our statements."),
    Key("users", "table", _identifier, "users", "The app's users table (optionally schema.table)."),
    Key("users", "id_column", _identifier, "id", "Its primary key column."),
    Key("users", "email_column", _identifier, "email", "Its email column."),
    Key(
        "users", "last_sync_column", _identifier, "last_sync", "Its last-sync timestamp column (the only one we write)."
    ),
    Key(
        "users",
        "last_sync_timezone",
        _timezone,
        "UTC",
        "The zone the app writes a timestamp-without-time-zone last_sync in (timestamptz needs nothing).",
    ),
    Key("users", "filter", _text, "", 'Optional SQL condition selecting active users, e.g. "active AND NOT deleted".'),
    Key(
        "sync", "interval", parse_duration, 3600.0, "A user is due when last_sync is older than this (database clock)."
    ),
    Key(
        "sync", "max_users_per_run", _integer(1, 10_000_000), 100_000, "Stop claiming after this many users in one run."
    ),
    Key("sync", "max_emails", _integer(1, 1_000_000), 50, "max_emails sent to the backend for each user."),
    Key("sync", "batch_size", _integer(1, 10_000), 100, "Users claimed, and results written, per database round trip."),
    Key(
        "sync", "lease", parse_duration, 900.0, "How long a claim lasts; a crashed run's users are due again after it."
    ),
    Key("sync", "shutdown_grace", parse_duration, 20.0, "On SIGTERM, wait this long for calls in flight."),
    Key("sync", "host_id", _text, "", "Name of this host in leases and runs (default: the hostname)."),
    Key("sync", "failure_backoff", parse_duration, 300.0, "Wait after a user's first failure; doubles each time."),
    Key("sync", "failure_backoff_max", parse_duration, 86400.0, "Cap of that wait."),
    Key(
        "sync",
        "circuit_breaker",
        _integer(1, 1_000_000),
        20,
        "Stop the run (exit 75) after this many consecutive transport failures or 5xx.",
    ),
    Key(
        "sync",
        "endpoint_probe",
        _integer(1, 1000),
        3,
        "If the first this-many answers are all 404/405/3xx (or 401/403), the endpoint (or token) is wrong: exit 78.",
    ),
    Key("backend", "base_url", _http_url, REQUIRED, "The backend, e.g. http://127.0.0.1:8000."),
    Key("backend", "sync_path", _path, "/api/v1/sync/start", "POST endpoint that syncs one user."),
    Key("backend", "health_path", _path, "/health", "GET endpoint checked before a run."),
    Key("backend", "token_file", _text, "", "File holding the bearer token (mode 0600); none: no header."),
    Key("backend", "ca_file", _text, "", "CA bundle for a backend with a private CA (default: system CAs)."),
    Key("backend", "connect_timeout", parse_duration, 5.0, "Connect timeout of every request."),
    Key("backend", "read_timeout", parse_duration, 30.0, "Read timeout of every request."),
    Key(
        "backend",
        "call_timeout",
        parse_duration,
        35.0,
        "The most one request may take, from connecting to its answer's last byte (a trickle cannot stretch it).",
    ),
    Key("backend", "concurrency", _integer(1, 1024), 8, "Calls in flight at once."),
    Key("backend", "max_rate", _rate, 0.0, "At most this many requests per second (0 = unlimited)."),
    Key("backend", "retries", _integer(0, 20), 3, "Retries of a transient failure (429, 502-504, connection errors)."),
    Key("backend", "retry_backoff", parse_duration, 1.0, "First retry waits up to this (full jitter), doubling."),
    Key("backend", "retry_backoff_max", parse_duration, 30.0, "Cap of one retry wait, Retry-After included."),
    Key("logging", "level", _log_level, "info", "debug, info, warning or error."),
    Key("status", "timer_interval", parse_duration, 300.0, "How often the timer starts a run (for `status`)."),
    Key(
        "status",
        "missed_intervals",
        _integer(1, 1000),
        3,
        "`status` exits non-zero when no run succeeded within this many timer intervals.",
    ),
    Key("metrics", "textfile", _text, "", "Write Prometheus metrics here after each run (node_exporter textfile)."),
    Key("alert", "webhook_url", _optional_http_url, "", "POST a JSON alert here when a run fails (off when empty)."),
    Key("alert", "command", _text, "", "Run this command (no shell) with the alert JSON on stdin when a run fails."),
)
_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    _BY_SECTION.setdefault(_key.section, {})[_key.name] = _key


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    connect_timeout: float
    statement_timeout: float
    timezone: str = "UTC"  # users.last_sync_timezone: every transaction runs in it, whatever the server's default
    url_from: str = "database.url"  # where the URL came from, for an error that must name it but not show it


@dataclass(frozen=True)
class UsersConfig:
    table: str
    id_column: str
    email_column: str
    last_sync_column: str
    last_sync_timezone: str
    filter: str


@dataclass(frozen=True)
class SyncConfig:
    interval: float
    max_users_per_run: int
    max_emails: int
    batch_size: int
    lease: float
    shutdown_grace: float
    host_id: str
    failure_backoff: float
    failure_backoff_max: float
    circuit_breaker: int
    endpoint_probe: int


@dataclass(frozen=True)
class BackendConfig:
    base_url: str
    sync_path: str
    health_path: str
    token: str | None
    ca_file: str | None
    connect_timeout: float
    read_timeout: float
    call_timeout: float
    concurrency: int
    max_rate: float
    retries: int
    retry_backoff: float
    retry_backoff_max: float

    @property
    def sync_url(self) -> str:
        return self.base_url + self.sync_path

    @property
    def health_url(self) -> str:
        return self.base_url + self.health_path

    @property
    def longest_silence(self) -> float:
        """Longest stretch in which one worker shows no progress: a retry wait, then one attempt cut off at its
        deadline (connect and read timeouts end it earlier, never later)."""
        return self.retry_backoff_max + self.call_timeout

    @property
    def longest_call(self) -> float:
        """Upper bound of one user's call with all its retries."""
        return (self.retries + 1) * self.longest_silence


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator commands and hooks need: health thresholds, metrics and alerts."""

    timer_interval: float
    missed_intervals: int
    metrics_textfile: str | None
    alert_webhook_url: str | None
    alert_command: str | None

    @property
    def stale_after(self) -> float:
        return self.timer_interval * self.missed_intervals


@dataclass(frozen=True)
class Config:
    source: str
    database: DatabaseConfig
    users: UsersConfig
    sync: SyncConfig
    backend: BackendConfig
    log_level: str
    operator: OperatorConfig
    warnings: tuple[str, ...]
    database_url_file: str | None = None  # where the secrets came from, for `email-sync check`
    backend_token_file: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never reach a log line, a table or an error message."""
        found = [self.backend.token or "", self.operator.alert_webhook_url or ""]
        found.extend(_url_secrets(self.database.url))
        return tuple(s for s in found if len(s) >= 4)


def _url_secrets(url: str) -> list[str]:
    """The database password as written in the URL, as SQLAlchemy reads it (to the first "@"), and decoded: any of
    them can reach a message."""
    password = url_password(url)
    if not password:
        return []
    read = {password, password.partition("@")[0]}
    return sorted(read | {unquote(p) for p in read})


def url_password(url: str) -> str | None:
    """The password of a database URL as written: everything between "scheme://user:" and the last "@".

    Reading to the last "@" finds the whole of a password whose "@" was not percent-encoded, where SQLAlchemy
    would cut it at its first "@" and take the rest for the host (and the port, from a ":" after it).
    """
    _, separator, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    _, colon, password = userinfo.partition(":")
    return password if separator and at and colon and password else None


def config_path(cli_path: str | None, env: Mapping[str, str]) -> str:
    return cli_path or env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_PATH


def load(
    path: str, env: Mapping[str, str] | None = None, need_backend: bool = True, need_database: bool = True
) -> Config:
    """The validated configuration, or ConfigError naming the file and key at fault.

    Commands that only touch the database (migrate, status, users, reset) pass need_backend=False, so a package
    can migrate before the operator has configured the backend; `alert` needs neither.
    """
    env = os.environ if env is None else env
    raw = _read_toml(path)
    values: dict[str, Any] = {}
    for section, table in raw.items():
        keys = _BY_SECTION.get(section)
        if keys is None:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(_BY_SECTION)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        for name, value in table.items():
            key = keys.get(name)
            if key is None:
                raise ConfigError(f"{path}: unknown key {section}.{name}")
            values[key.dotted] = _parse(key, value, path)
    values.update(_from_env(env))
    for key in KEYS:
        if key.dotted not in values:
            if key.default is REQUIRED and need_backend:
                raise ConfigError(f"{path}: {key.dotted} is required (or set {key.env})")
            values[key.dotted] = "" if key.default is REQUIRED else key.default
    return _build(path, values, env, need_database)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (use --config PATH or {ENV_PREFIX}CONFIG)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte order mark (Notepad writes one) is not TOML
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {error.start}") from None
    except ValueError as error:  # TOMLDecodeError, or int()'s 4300-digit limit that tomllib lets through
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def _parse(key: Key, value: Any, where: str) -> Any:
    try:
        return key.parse(value)
    except _Invalid as error:
        message = "is not valid" if key.secret else str(error)
        raise ConfigError(f"{where}: {key.dotted} {message}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Overrides from EMAIL_SYNC_<SECTION>_<KEY>; variables of sections we do not have are not ours."""
    values: dict[str, Any] = {}
    sections = {s.upper(): s for s in _BY_SECTION}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, rest = name[len(ENV_PREFIX) :].partition("_")
        if section not in sections:
            continue
        key = _BY_SECTION[sections[section]].get(rest.lower())
        if key is None:
            raise ConfigError(f"environment {name}: unknown key {sections[section]}.{rest.lower()}")
        values[key.dotted] = _parse(key, value, f"environment {name}")
    return values


def _build(path: str, v: dict[str, Any], env: Mapping[str, str], need_database: bool) -> Config:
    warnings: list[str] = []
    database_url, url_origin = _secret(
        path,
        env,
        DATABASE_URL_CREDENTIAL,
        v["database.url_file"],
        "database.url_file",
        v["database.url"],
        warnings,
    )
    if database_url:
        _check_database_url(path, url_origin, database_url)
        if database_url.startswith("sqlite") and v["users.last_sync_timezone"].upper() != "UTC":
            raise ConfigError(
                f"{path}: users.last_sync_timezone must be UTC on SQLite, whose text timestamps carry no zone"
            )
    elif need_database:
        raise ConfigError(
            f"{path}: database.url is required (or database.url_file, or the {DATABASE_URL_CREDENTIAL} credential)"
        )
    token, token_origin = _secret(
        path, env, BACKEND_TOKEN_CREDENTIAL, v["backend.token_file"], "backend.token_file", "", warnings
    )
    if not token.isascii():
        raise ConfigError(f"{token_origin}: the token must be ASCII: it is sent in an HTTP header")
    ca_file = v["backend.ca_file"] or None
    if ca_file is not None and not os.access(ca_file, os.R_OK):
        raise ConfigError(f"{path}: backend.ca_file: cannot read {ca_file}")
    backend = _section(BackendConfig, "backend", v, token=token or None, ca_file=ca_file)
    sync = _section(SyncConfig, "sync", v, host_id=v["sync.host_id"] or os.uname().nodename)
    if sync.lease < 2 * backend.longest_call:
        raise ConfigError(
            f"{path}: sync.lease ({sync.lease:g}s) must be at least twice the longest call with its retries "
            f"({backend.longest_call:g}s, from backend.retries, call_timeout and retry_backoff_max)"
        )
    return Config(
        source=path,
        database=_section(
            DatabaseConfig,
            "database",
            v,
            url=database_url,
            timezone=v["users.last_sync_timezone"],
            url_from=url_origin,
        ),
        users=_section(UsersConfig, "users", v, filter=v["users.filter"].strip()),
        sync=sync,
        backend=backend,
        log_level=v["logging.level"],
        operator=OperatorConfig(
            timer_interval=v["status.timer_interval"],
            missed_intervals=v["status.missed_intervals"],
            metrics_textfile=v["metrics.textfile"] or None,
            alert_webhook_url=v["alert.webhook_url"] or None,
            alert_command=v["alert.command"] or None,
        ),
        warnings=tuple(warnings),
        database_url_file=v["database.url_file"] or None,
        backend_token_file=v["backend.token_file"] or None,
    )


def _section(cls: type[T], section: str, v: dict[str, Any], **derived: Any) -> T:
    """A section's dataclass from its keys' values, field for key, plus the fields derived from other keys."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # every T here is a dataclass
    return cls(**{name: v[f"{section}.{name}"] for name in names if name not in derived}, **derived)


def _secret(
    path: str, env: Mapping[str, str], credential: str, file: str, file_key: str, inline: str, warnings: list[str]
) -> tuple[str, str]:
    """A secret from the systemd credential, else the *_file key, else the inline value; and where it came from,
    for a message about it.

    Outside the unit (root running `email-sync migrate` or `check`), the credential's source file in the
    credstore stands in for it, so the operator's commands see the same secrets as the service.
    """
    credentials = env.get("CREDENTIALS_DIRECTORY")
    inline_key = file_key.removesuffix("_file")
    if credentials and Path(credentials, credential).exists():
        what = f"{path}: credential {credential}"
        return _read_secret(Path(credentials, credential), what, warnings), what
    stored = Path(CREDSTORE, f"email-sync.{credential}")
    if not credentials and not file and not inline and os.access(stored, os.R_OK):
        what = f"{path}: credential {credential} ({stored})"
        return _read_secret(stored, what, warnings), what
    if file:
        if inline:
            raise ConfigError(f"{path}: set either {file_key} or {inline_key}, not both")
        return _read_secret(Path(file), f"{path}: {file_key}", warnings), f"{path}: {file_key} {file}"
    variable = f"{ENV_PREFIX}{inline_key.replace('.', '_').upper()}"
    return inline, f"{path}: {inline_key}" + (f" (environment {variable})" if variable in env else "")


def _read_secret(file: Path, what: str, warnings: list[str]) -> str:
    try:
        info = file.stat()
        value = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: {file} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what}: cannot read {file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {file} is not valid UTF-8") from None
    if not value:
        raise ConfigError(f"{what}: {file} is empty")
    if "\n" in value:
        raise ConfigError(f"{what}: {file} must hold a single line")
    if any(c < " " or c == "\x7f" for c in value):  # a NUL makes the database driver raise, a CR the HTTP client
        raise ConfigError(f"{what}: {file} must not contain control characters")
    if info.st_mode & stat.S_IROTH:
        warnings.append(f"{file} is readable by every user; chmod 0600 it")
    return value


def _check_database_url(path: str, origin: str, url: str) -> None:
    scheme = url.partition("://")[0].split("+")[0]
    if scheme not in ("postgresql", "postgres", "sqlite") or "://" not in url:
        raise ConfigError(f"{path}: database.url must start with postgresql:// or sqlite:/// (the value is not shown)")
    if scheme != "sqlite" and "@" in (url_password(url) or ""):  # a file's path may hold both, as it likes
        raise ConfigError(
            f"{origin}: the password in the database URL must be percent-encoded (@ as %40, : as %3A, / as %2F); "
            "the URL is not shown"
        )
