"""Loading and validating the configuration: a TOML file, overridden by EMAIL_SYNC_<SECTION>_<KEY> variables.

Every key is declared once, as a field of its section's dataclass (parser, default, meaning); KEYS is derived from
them, and the file, the environment and the documentation all go through that table, so a key cannot be accepted
in one place and unknown in another. The value parsers live in values.py, the secrets in credentials.py.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from emailsync.config import credentials, values
from emailsync.config.credentials import BACKEND_TOKEN_CREDENTIAL, DATABASE_URL_CREDENTIAL
from emailsync.errors import ConfigError

DEFAULT_PATH = "/etc/email-sync/email-sync.toml"
ENV_PREFIX = "EMAIL_SYNC_"
MIGRATE_MODES = ("auto", "manual")  # database.migrate: who applies a new release's schema steps
PING_STYLES = ("healthchecks", "uptime-kuma", "ntfy")  # what monitor.ping_url points at (emailsync/report/monitor.py)


@dataclass(frozen=True)
class Key:
    """One configuration key, as its section's dataclass field declares it."""

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


REQUIRED: Any = object()
T = TypeVar("T")


def key(parse: Callable[[Any], Any], default: Any, help: str, *, secret: bool = False) -> Any:
    """A section's field that is a configuration key: its parser, default and meaning, declared once; the file,
    the environment, the shipped example files and the documentation are all read from here."""
    meta = {"parse": parse, "default": default, "help": " ".join(help.split()), "secret": secret}
    return field(metadata=meta) if default is REQUIRED else field(default=default, metadata=meta)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = key(
        values.text,
        "",
        """The app's database: postgresql://... in any form libpq documents (several hosts, with
        target_session_attrs=read-write for a primary and standbys), a libpq key=value string, or sqlite:///....
        Prefer url_file or the database-url credential: it holds a password.""",
        secret=True,
    )
    url_file: str = key(values.text, "", "File holding the database URL (mode 0600).")
    connect_timeout: float = key(values.duration, 10.0, "Give up connecting to the database after this.")
    statement_timeout: float = key(values.statement_timeout, 30.0, "PostgreSQL statement_timeout for our statements.")
    migrate: str = key(
        values.one_of(*MIGRATE_MODES),
        "auto",
        """auto: a run first applies the schema steps the database lacks (one host migrates, the others wait for it);
        manual: a run exits 78 until `email-sync migrate` has run, for a DBA who applies the DDL with another role.""",
    )
    timezone: str = "UTC"  # users.last_sync_timezone: every transaction runs in it, whatever the server's default
    url_from: str = "database.url"  # where the URL came from, for an error that must name it but not show it


@dataclass(frozen=True)
class UsersConfig:
    table: str = key(values.identifier, "users", "The app's users table (optionally schema.table).")
    id_column: str = key(values.identifier, "id", "Its primary key column.")
    email_column: str = key(values.identifier, "email", "Its email column.")
    last_sync_column: str = key(
        values.identifier, "last_sync", "Its last-sync timestamp column (the only one we write)."
    )
    last_sync_timezone: str = key(
        values.timezone,
        "UTC",
        "The zone the app writes a timestamp-without-time-zone last_sync in (timestamptz needs nothing).",
    )
    filter: str = key(values.text, "", 'Optional SQL condition selecting active users, e.g. "active AND NOT deleted".')


@dataclass(frozen=True)
class SyncConfig:
    interval: float = key(values.duration, 3600.0, "A user is due when last_sync is older than this (database clock).")
    max_users_per_run: int = key(
        values.integer(1, 10_000_000), 100_000, "Stop claiming after this many users in one run."
    )
    max_emails: int = key(values.integer(1, 1_000_000), 50, "max_emails sent to the backend for each user.")
    batch_size: int = key(
        values.integer(1, 10_000),
        100,
        """Users claimed per database round trip, and the most results written in one (they are written sooner:
        docs/operations.md, "What a crash forgets").""",
    )
    lease: float = key(values.duration, 900.0, "How long a claim lasts; a crashed run's users are due again after it.")
    shutdown_grace: float = key(values.duration, 20.0, "On SIGTERM, wait this long for calls in flight.")
    host_id: str = key(values.text, "", "Name of this host in leases and runs (default: the hostname).")
    failure_backoff: float = key(values.duration, 300.0, "Wait after a user's first failure; doubles each time.")
    failure_backoff_max: float = key(values.duration, 86400.0, "Cap of that wait.")
    circuit_breaker: int = key(
        values.integer(1, 1_000_000),
        20,
        "Stop the run (exit 75) after this many consecutive transport failures or 5xx.",
    )
    endpoint_probe: int = key(
        values.integer(1, 1000),
        3,
        "If the first this-many answers are all 404/405/3xx (or 401/403), the endpoint (or token) is wrong: exit 78.",
    )
    quarantine_after: int = key(
        values.integer(0, 1000),
        5,
        """Park a user whose calls failed permanently this many times in a row (0 = never): a run stops
        retrying it, one alert names it, `email-sync unpark` or `reset` returns it.""",
    )
    quarantine_statuses: tuple[int, ...] = key(
        values.statuses,
        (),
        """The answers that count as permanent failures, e.g. [410, 422]; empty: every 4xx but 401, 403, 404,
        405, 408, 409 and 429 (which say the configuration is wrong, or ask to retry).""",
    )


@dataclass(frozen=True)
class BackendConfig:
    base_url: str = key(values.http_url, REQUIRED, "The backend, e.g. http://127.0.0.1:8000.")
    sync_path: str = key(
        values.url_path,
        "/api/v1/test/sync/start",
        "POST endpoint that syncs one user: the route the app's backend serves.",
    )
    health_path: str = key(values.url_path, "/health", "GET endpoint checked before a run.")
    token_file: str = key(values.text, "", "File holding the bearer token (mode 0600); none: no header.")
    ca_file: str = key(values.text, "", "CA bundle for a backend with a private CA (default: system CAs).")
    connect_timeout: float = key(values.duration, 5.0, "Connect timeout of every request.")
    read_timeout: float = key(values.duration, 30.0, "Read timeout of every request.")
    call_timeout: float = key(
        values.duration,
        35.0,
        "The most one request may take, from connecting to its answer's last byte (a trickle cannot stretch it).",
    )
    concurrency: int | Literal["auto"] = key(
        values.concurrency,
        8,
        """Calls in flight at once, or "auto": as many as the backend takes, found from its latency and its
        429/503/timeouts, up to max_concurrency.""",
    )
    max_concurrency: int = key(
        values.integer(1, 1024), 64, 'The most calls in flight that concurrency = "auto" may reach.'
    )
    max_rate: float = key(
        values.rate,
        0.0,
        """At most this many requests per second for the whole fleet: every host sharing the database draws from
        this one budget (0 = unlimited).""",
    )
    retries: int = key(
        values.integer(0, 20), 3, "Retries of a transient failure (409, 429, 502-504, connection errors)."
    )
    retry_backoff: float = key(values.duration, 1.0, "First retry waits up to this (full jitter), doubling.")
    retry_backoff_max: float = key(values.duration, 30.0, "Cap of one retry wait, Retry-After included.")
    token: str | None = None  # from the backend-token credential or token_file

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
class LoggingConfig:
    level: str = key(values.log_level, "info", "debug, info, warning or error.")


@dataclass(frozen=True)
class StatusConfig:
    timer_interval: float = key(values.duration, 300.0, "How often the timer starts a run (for `status`).")
    missed_intervals: int = key(
        values.integer(1, 1000), 3, "`status` exits non-zero when no run succeeded within this many timer intervals."
    )
    max_staleness: float = key(
        values.duration_or_derived,
        0.0,
        """The freshness promise: every user synced within this. Broken when a user's last_sync (backoff included,
        parked users not; never-synced users are counted, but do not break it) is older: `status` exits 2, the
        metrics say so and the end-of-run ping is a failure. 0: sync.interval + missed_intervals x timer_interval
        (4500s by default).""",
    )

    @property
    def stale_after(self) -> float:
        return self.timer_interval * self.missed_intervals


@dataclass(frozen=True)
class MonitorConfig:
    ping_url: str = key(
        values.ping_url,
        "",
        """Ping this monitoring URL at each run's start and end; success only when the run ended healthy and the
        freshness promise holds (off when empty). Its key (path segments, query values) is a secret.""",
        secret=True,
    )
    ping_style: str = key(
        values.one_of(*PING_STYLES),
        "healthchecks",
        """healthchecks: POST /start, then the URL itself or /fail, ?rid=<run id>, the run's counts as the body;
        uptime-kuma: at the end, GET with status=up|down, msg and ping (the duration); ntfy: at the end, a message
        (priority min when all is well, high with a warning tag when not).""",
    )
    ping_timeout: float = key(values.duration, 10.0, "A ping, its one retry included, gives up after this.")

    @property
    def url_secrets(self) -> tuple[str, ...]:
        """The parts of the ping URL that let anyone ping in our name: the UUID, ping key, push token or topic in
        its path and the values of its query (an access token), 8 characters or more (shorter are plain words)."""
        parts = urlsplit(self.ping_url)
        found = [segment for segment in parts.path.split("/") if len(segment) >= 8]
        found += [value for _, value in parse_qsl(parts.query) if len(value) >= 8]
        return tuple(found)


@dataclass(frozen=True)
class MetricsConfig:
    textfile: str = key(
        values.text,
        "/var/lib/email-sync-metrics/email-sync.prom",
        "Write Prometheus metrics here at each run's start and end (a node_exporter textfile, *.prom; off when empty)."
        " The default is the package's place, which the unit may write and node_exporter reads through a link.",
    )


@dataclass(frozen=True)
class AlertConfig:
    webhook_url: str = key(
        values.optional_http_url,
        "",
        """POST a JSON alert here when runs start failing, and a "resolved" when one succeeds again (off when
        empty).""",
    )
    command: str = key(values.text, "", "Run this command (no shell) with the same JSON on stdin (off when empty).")
    after: int = key(
        values.integer(1, 1000),
        3,
        """Alert when this many runs in a row failed on something temporary (database or backend down, a crash, the
        watchdog), or sooner when a failed run finds the freshness promise broken; a configuration error (exit 78)
        alerts at its first run. 3: a blip that the next run or two outlive pages nobody, an outage of about 15
        minutes does, as `status` turns unhealthy then too.""",
    )


SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "users": UsersConfig,
    "sync": SyncConfig,
    "backend": BackendConfig,
    "logging": LoggingConfig,
    "status": StatusConfig,
    "metrics": MetricsConfig,
    "alert": AlertConfig,
    "monitor": MonitorConfig,
}
KEYS: tuple[Key, ...] = tuple(
    Key(section, f.name, **f.metadata) for section, cls in SECTIONS.items() for f in fields(cls) if f.metadata
)
_BY_SECTION: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    _BY_SECTION.setdefault(_key.section, {})[_key.name] = _key


@dataclass(frozen=True)
class Config:
    source: str
    database: DatabaseConfig
    users: UsersConfig
    sync: SyncConfig
    backend: BackendConfig
    logging: LoggingConfig
    status: StatusConfig
    metrics: MetricsConfig
    alert: AlertConfig
    monitor: MonitorConfig
    warnings: tuple[str, ...]
    errors: tuple[str, ...] = ()  # every problem found, one line each; load() raises them, `check` shows them
    broken: frozenset[str] = frozenset()  # the keys (or sections) at fault: they hold their defaults

    def at_fault(self, *names: str) -> str | None:
        """The first key (in KEYS order) at fault among ``names``: keys ("backend.ca_file") or sections
        ("backend"); None when they are all valid, so a check built on them can run."""
        for broken in sorted(self.broken, key=_order):
            section = broken.partition(".")[0]
            if broken in names or section in names:
                return broken
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never reach a log line, a table or an error message."""
        found = [self.backend.token or "", self.alert.webhook_url, *self.monitor.url_secrets]
        found.extend(credentials.url_secrets(self.database.url))
        return tuple(s for s in found if len(s) >= 4)


def _order(dotted: str) -> int:
    """Where a key, or the section of an unknown one, stands in KEYS: the order of the configuration reference."""
    return next((i for i, key in enumerate(KEYS) if dotted in (key.dotted, key.section)), len(KEYS))


def config_path(cli_path: str | None, env: Mapping[str, str]) -> str:
    return cli_path or env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_PATH


def load(
    path: str, env: Mapping[str, str] | None = None, need_backend: bool = True, need_database: bool = True
) -> Config:
    """The validated configuration, or one ConfigError listing every problem, each naming the file and key at fault.

    Commands that only touch the database (migrate, status, users, reset) pass need_backend=False, so a package
    can migrate before the operator has configured the backend; `alert` needs neither.
    """
    config = gather(path, env, need_backend, need_database)
    if config.errors:
        raise ConfigError(*config.errors)
    return config


def gather(
    path: str, env: Mapping[str, str] | None = None, need_backend: bool = True, need_database: bool = True
) -> Config:
    """The configuration with every problem found in it (Config.errors, in the order of the file, then the
    environment, then the checks across keys); a key at fault keeps its default and is named in Config.broken.
    `check` shows them all and goes on with what the valid keys allow; everything else calls load(). Only a file
    that cannot be read as TOML at all raises ConfigError here."""
    env = os.environ if env is None else env
    raw = _read_toml(path)
    problems = _Problems()
    values: dict[str, Any] = {}
    for section, table in raw.items():
        keys = _BY_SECTION.get(section)
        if keys is None:
            problems.add(section, f"{path}: unknown section [{section}] (known: {', '.join(_BY_SECTION)})")
        elif not isinstance(table, dict):
            problems.add(section, f"{path}: {section} must be a table ([{section}])")
        else:
            for name, value in table.items():
                key = keys.get(name)
                if key is None:
                    problems.add(f"{section}.{name}", f"{path}: unknown key {section}.{name}")
                else:
                    problems.parse(key, value, path, values)
    _from_env(env, problems, values)
    for key in KEYS:
        if key.dotted not in values:
            if key.default is REQUIRED and need_backend and not problems.any_of(key.dotted, key.section):
                problems.add(key.dotted, f"{path}: {key.dotted} is required (or set {key.env})")
            values[key.dotted] = "" if key.default is REQUIRED else key.default
    return _build(path, values, env, need_database, problems)


class _Problems:
    """What is wrong with a configuration, one line each, and the keys at fault: collected, not raised at the
    first, so one `check` or one failed run names every bad key."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.broken: set[str] = set()

    def add(self, key: str, *lines: str) -> None:
        self.lines.extend(lines)
        self.broken.add(key)

    @contextmanager
    def under(self, *keys: str) -> Iterator[None]:
        """A check of ``keys`` that raises ConfigError: its lines are collected and the keys marked broken."""
        try:
            yield
        except ConfigError as error:
            self.lines.extend(error.problems)
            self.broken.update(keys)

    def parse(self, key: Key, value: Any, where: str, into: dict[str, Any]) -> None:
        """``key``'s value parsed into ``into``; when invalid, the line naming ``where`` and the key instead."""
        try:
            into[key.dotted] = key.parse(value)
        except values.Invalid as error:
            message = "is not valid" if key.secret else str(error)
            self.add(key.dotted, f"{where}: {key.dotted} {message}")

    def any_of(self, *keys: str) -> bool:
        return any(key in self.broken for key in keys)


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


def _from_env(env: Mapping[str, str], problems: _Problems, into: dict[str, Any]) -> None:
    """Overrides from EMAIL_SYNC_<SECTION>_<KEY>; variables of sections we do not have are not ours."""
    sections = {s.upper(): s for s in _BY_SECTION}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, rest = name[len(ENV_PREFIX) :].partition("_")
        if section not in sections:
            continue
        key = _BY_SECTION[sections[section]].get(rest.lower())
        if key is None:
            problems.add(
                f"{sections[section]}.{rest.lower()}",
                f"environment {name}: unknown key {sections[section]}.{rest.lower()}",
            )
        else:
            problems.parse(key, value, f"environment {name}", into)


def _build(path: str, v: dict[str, Any], env: Mapping[str, str], need_database: bool, problems: _Problems) -> Config:
    warnings: list[str] = []
    # A key already named is not loaded from its default: that would only add a second, wrong error.
    database_url, url_origin = "", "database.url"
    if not problems.any_of("database.url", "database.url_file"):
        with problems.under("database.url", "database.url_file"):
            loaded_url, origin = credentials.load(
                credentials.SecretSource(
                    DATABASE_URL_CREDENTIAL,
                    "database.url_file",
                    v["database.url_file"],
                    v["database.url"],
                    _BY_SECTION["database"]["url"].env,
                ),
                path,
                env,
                warnings,
            )
            if loaded_url:
                credentials.check_database_url(path, origin, loaded_url)
            database_url, url_origin = loaded_url, origin
    if database_url:
        if database_url.startswith("sqlite") and v["users.last_sync_timezone"].upper() != "UTC":
            problems.add(
                "users.last_sync_timezone",
                f"{path}: users.last_sync_timezone must be UTC on SQLite, whose text timestamps carry no zone",
            )
    elif need_database and not problems.any_of("database.url", "database.url_file"):
        problems.add(
            "database.url",
            f"{path}: database.url is required (or database.url_file, or the {DATABASE_URL_CREDENTIAL} credential)",
        )
    token = ""
    if not problems.any_of("backend.token_file"):
        with problems.under("backend.token_file"):
            loaded, origin = credentials.load(
                credentials.SecretSource(
                    BACKEND_TOKEN_CREDENTIAL, "backend.token_file", v["backend.token_file"], "", ""
                ),
                path,
                env,
                warnings,
            )
            if not loaded.isascii():
                raise ConfigError(f"{origin}: the token must be ASCII: it is sent in an HTTP header")
            token = loaded
    ca_file = v["backend.ca_file"]
    if ca_file and not os.access(ca_file, os.R_OK):
        problems.add("backend.ca_file", f"{path}: backend.ca_file: cannot read {ca_file}")
    backend = _section(BackendConfig, "backend", v, token=token or None)
    sync = _section(SyncConfig, "sync", v, host_id=v["sync.host_id"] or os.uname().nodename)
    lease_inputs = ("sync.lease", "backend.retries", "backend.call_timeout", "backend.retry_backoff_max")
    if sync.lease < 2 * backend.longest_call and not problems.any_of(*lease_inputs):
        problems.add(
            "sync.lease",
            f"{path}: sync.lease ({sync.lease:g}s) must be at least twice the longest call with its retries "
            f"({backend.longest_call:g}s, from backend.retries, call_timeout and retry_backoff_max)",
        )
    return Config(
        source=path,
        database=_section(
            DatabaseConfig, "database", v, url=database_url, timezone=v["users.last_sync_timezone"], url_from=url_origin
        ),
        users=_section(UsersConfig, "users", v, filter=v["users.filter"].strip()),
        sync=sync,
        backend=backend,
        logging=_section(LoggingConfig, "logging", v),
        status=_section(
            StatusConfig,
            "status",
            v,
            max_staleness=v["status.max_staleness"]
            or v["sync.interval"] + v["status.missed_intervals"] * v["status.timer_interval"],
        ),
        metrics=_section(MetricsConfig, "metrics", v),
        alert=_section(AlertConfig, "alert", v),
        monitor=_section(MonitorConfig, "monitor", v),
        warnings=tuple(warnings),
        errors=tuple(problems.lines),
        broken=frozenset(problems.broken),
    )


def _section(cls: type[T], section: str, v: dict[str, Any], **derived: Any) -> T:
    """A section's dataclass from its keys' values, plus the fields derived from other keys (or overriding one)."""
    keys = {name: value for name, value in _BY_SECTION[section].items() if name not in derived}
    return cls(**{name: v[f"{section}.{name}"] for name in keys}, **derived)
