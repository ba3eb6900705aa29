"""Property tests of the config contract over generated files and environments.

Whatever the file holds (known and unknown sections and keys, values of any type, huge or negative numbers, bad
URLs, invalid TOML, invalid UTF-8, random bytes) and whatever EMAIL_SYNC_<SECTION>_<KEY> variables are set,
``load()`` returns a Config or raises ConfigError naming the file (or the variable) and the key at fault, never
another exception and never a secret; ``email-sync run`` exits 78, or 75 once past the config (the database is
unreachable), never 0 or 1, and never prints a traceback.

Runs are bounded; with CI=true they are derandomized (and use no example database) so CI is reproducible.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import signal
import string
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emailsync.commands import cli
from emailsync.config.settings import KEYS, Config, Key, load
from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL, ConfigError

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
UNREACHABLE_DB = "postgresql://u:pw@127.0.0.1:1/x"
BASE: dict[str, Any] = {"database": {"url": UNREACHABLE_DB}, "backend": {"base_url": "http://127.0.0.1:9"}}
SECTIONS: dict[str, list[str]] = {}
for _key in KEYS:
    SECTIONS.setdefault(_key.section, []).append(_key.name)
# The keys the sync.lease check is computed from: a bad one of these may be reported as a too short sync.lease.
LEASE_INPUTS = {"backend.retries", "backend.call_timeout", "backend.retry_backoff_max"}
# Variables that look like ours but are not: the test suite's own, and the config path.
FOREIGN_ENV = {
    "EMAIL_SYNC_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "EMAIL_SYNC_CONFIG": "/nonexistent/email-sync.toml",
    "EMAIL_SYNCX_BACKEND_RETRIES": "many",
    "email_sync_backend_retries": "many",
}


def bounded(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=CI,
        database=None if CI else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- TOML, written by hand so that any value (and any raw snippet) can be placed anywhere --------------------------


class Raw(str):
    """TOML text written as is: numbers tomllib reads but Python cannot print, odd literals, broken escapes."""


RAW = [
    "0x" + "f" * 5000,
    "9" * 5000,
    "9" * 400,
    "-" + "9" * 400,
    "1e400",
    "-1e400",
    "+inf",
    "-nan",
    "0o777",
    "0b101",
    "1_000",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'literal'",
    "'''multi\nline'''",
    '"""a\nb"""',
    '"\\ud800"',
    "[1, 'a', {x = 1}]",
    "{}",
    "[]",
]


def quote(text: str) -> str:
    escaped = (f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return '"' + "".join(escaped) + '"'


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else quote(name)


def toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else "inf"
            if value == float("inf")
            else "-inf"
            if value == float("-inf")
            else repr(value)
        )
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(sections: dict[str, Any]) -> str:
    """Top-level keys first (a section written as a plain value is one), then one [table] per section."""
    lines = [
        f"{toml_key(name)} = {toml_value(value)}" for name, value in sections.items() if not isinstance(value, dict)
    ]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_key(name)}]")
            lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


# --- strategies ---------------------------------------------------------------------------------------------------

safe_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20)
unknown_names = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True) | st.text(max_size=6)
durations = st.from_regex(r"\s?-?[0-9]{1,6}(\.[0-9]{1,3})?(ms|s|m|h|d)?([0-9]{1,3}(ms|s|m|h|d))?\s?", fullmatch=True)
urls = st.sampled_from(
    [
        "http://127.0.0.1:9",
        "https://api.example.com/",
        "http://",
        "ftp://h",
        "localhost:8000",
        "http://[::1",
        "http://h:99999",
        "http://h:port",
        "http://u:pw@h",
        "http://h/?token=x",
        "http://h#frag",
        "http://ex ample.com",
        "http://u:pw\u2100@h",
        "mysql://u:pw@h/db",
        "postgresql://u:pw@127.0.0.1:1/x",
        "postgres:/x",
        "sqlite://",
        "",
    ]
) | st.builds(
    lambda scheme, auth, host, port, path: f"{scheme}://{auth}{host}{port}{path}",
    st.sampled_from(["http", "https", "ftp", "postgresql", "HTTP", ""]),
    st.sampled_from(["", "u@", "u:p@", ":@"]),
    st.sampled_from(["h", "127.0.0.1", "[::1]", "", "h h", "\u00e9.example"]),
    st.sampled_from(["", ":0", ":1", ":65536", ":-1", ":x"]),
    st.sampled_from(["", "/", "/api", "?q", "#f", "/a b"]),
)
words = st.sampled_from(
    ["users", "app.users", "1abc", "a b", "a.b.c", "DEBUG", "info", "loud", "/", "/health", "api/x", "/a?b", ""]
)
scalars = st.one_of(
    st.integers(-5, 100),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63, 2**1000),
    st.floats(),
    st.booleans(),
    safe_text,
    st.text(max_size=10),
    durations,
    urls,
    words,
    st.dates(),
    st.sampled_from(RAW).map(Raw),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unknown_names, inner, max_size=2), max_leaves=4
)
# What an environment variable can hold: a string (without NUL, which os.environ cannot carry either).
env_values = st.one_of(safe_text, durations, urls, words, st.integers(-(2**70), 2**70).map(str), st.just("9" * 5000))


def plausible(key: Key) -> st.SearchStrategy[Any]:
    """Values of the key's kind, mostly valid: so that a good share of the generated configs load."""
    if key.dotted == "backend.max_rate":
        return st.floats(0, 100) | st.integers(0, 100)
    if key.dotted == "backend.concurrency":
        return st.integers(0, 60) | st.sampled_from(["auto", "AUTO", "automatic"])
    if isinstance(key.default, float):
        seconds = st.integers(1, 900)
        return seconds | seconds.map(lambda n: f"{n}s") | st.sampled_from(["250ms", "5m", "1h30m", "2d"])
    if isinstance(key.default, int):
        return st.integers(0, 60)
    if key.name.endswith("_file"):
        return st.sampled_from(["", "/", "/nonexistent/file"])
    if key.name.endswith("_path"):
        return st.sampled_from(["/", "/health", "/api/v1/sync/start", "api", "/a b"])
    if key.name == "level":
        return st.sampled_from(["debug", "INFO", "warning", "error", "loud"])
    if key.section == "users":
        return words
    return urls | safe_text  # the URLs, host_id


@st.composite
def config_sections(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a valid base with a few keys added or replaced, known or not, by values of their kind or any type."""
    # Hypothesis favours small integers: the small choices are the common cases here.
    use_base = draw(st.integers(0, 2)) < 2
    sections: dict[str, Any] = {name: dict(table) for name, table in BASE.items()} if use_base else {}
    for _ in range(draw(st.integers(0, 3))):
        choice = draw(st.integers(0, 9))
        if choice <= 6:
            key = draw(st.sampled_from(KEYS))
            table = sections[key.section] if isinstance(sections.get(key.section), dict) else {}
            table[key.name] = draw(plausible(key) if choice <= 4 else values)
            sections[key.section] = table
        elif choice <= 8:
            section = draw(st.sampled_from(list(SECTIONS)) | unknown_names)
            table = sections[section] if isinstance(sections.get(section), dict) else {}
            table[draw(unknown_names)] = draw(values)
            sections[section] = table
        else:
            sections[draw(st.sampled_from(list(SECTIONS)) | unknown_names)] = draw(scalars)  # not a table
    return sections


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A generated config, as written or damaged: bytes inserted (invalid UTF-8 or TOML), cut short, or random."""
    text = toml_document(draw(config_sections())).encode()
    damage = draw(st.sampled_from(["none"] * 4 + ["insert", "truncate", "random"]))
    if damage == "insert":
        at = draw(st.integers(0, len(text)))
        junk = draw(
            st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"=", b"[", b'"', b"\n[x]\n"])
            | st.binary(min_size=1, max_size=6)
        )
        return text[:at] + junk + text[at:]
    if damage == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if damage == "random":
        return draw(st.binary(max_size=120))
    return text


env_names = st.one_of(
    st.sampled_from([key.env for key in KEYS]),
    st.builds(
        lambda section, rest: f"EMAIL_SYNC_{section}_{rest}",
        st.sampled_from([s.upper() for s in SECTIONS]),
        st.from_regex(r"[A-Z_]{0,12}", fullmatch=True),
    ),
    st.sampled_from(list(FOREIGN_ENV)),
)
environments = st.dictionaries(env_names, env_values, max_size=3)


@contextlib.contextmanager
def config_at(content: bytes | str) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "email-sync.toml")
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        yield str(path)


def is_toml(document: str) -> bool:
    try:
        tomllib.loads(document)
    except ValueError:
        return False
    return True


def outcome(path: str, env: dict[str, str]) -> Config | ConfigError:
    """What load() did; any exception other than ConfigError escapes and fails the test."""
    try:
        return load(path, env)
    except ConfigError as error:
        return error


# --- load() -------------------------------------------------------------------------------------------------------


@bounded(300)
@given(document=documents(), env=environments)
def test_load_returns_a_config_or_a_config_error_naming_the_file_or_the_variable(
    document: bytes, env: dict[str, str]
) -> None:
    with config_at(document) as path:
        result = outcome(path, env)
    event(type(result).__name__)
    if isinstance(result, Config):
        assert result.source == path
        return
    message = str(result)
    assert message.startswith(f"{path}: ") or any(message.startswith(f"environment {name}: ") for name in env)


@st.composite
def one_bad_value(draw: st.DrawFn) -> tuple[str, str, Any, bool]:
    """(section, name, value, via the environment?): one key, known or not, set to one generated value."""
    if draw(st.integers(0, 5)):
        key: Key = draw(st.sampled_from(KEYS))
        section, name = key.section, key.name
    else:
        section = draw(st.sampled_from(list(SECTIONS)))
        name = draw(unknown_names.filter(lambda n: n not in SECTIONS[section]))
    via_env = draw(st.booleans())
    if via_env and not re.fullmatch(r"[a-z_]*", name):
        via_env = False  # a variable name cannot spell it
    return section, name, draw(env_values if via_env else values), via_env


@bounded(300)
@given(bad=one_bad_value())
def test_one_bad_value_is_named_with_its_key_and_its_file_or_variable(bad: tuple[str, str, Any, bool]) -> None:
    section, name, value, via_env = bad
    sections: dict[str, Any] = {s: dict(table) for s, table in BASE.items()}
    env: dict[str, str] = {}
    variable = f"EMAIL_SYNC_{section}_{name}".upper()
    if via_env:
        env[variable] = value
    else:
        sections.setdefault(section, {})[name] = value
    document = toml_document(sections)
    with config_at(document) as path:
        result = outcome(path, env)
    event(type(result).__name__)
    if isinstance(result, Config):
        return
    message = str(result)
    if not is_toml(document):  # a raw snippet broke the document: that is the fault, not the key
        assert message.startswith(f"{path}: invalid TOML"), message
        return
    dotted = f"{section}.{name}"
    assert message.startswith(f"{path}: ") or (via_env and message.startswith(f"environment {variable}: ")), message
    if dotted in LEASE_INPUTS and "sync.lease" in message:
        return
    assert dotted in message, message


@bounded(300)
@given(document=documents(), env=environments)
def test_variables_that_are_not_ours_change_nothing(document: bytes, env: dict[str, str]) -> None:
    ours = {name: value for name, value in env.items() if name not in FOREIGN_ENV}
    with config_at(document) as path:
        alone, with_foreign = outcome(path, ours), outcome(path, {**FOREIGN_ENV, **ours})
    if isinstance(alone, ConfigError):
        assert isinstance(with_foreign, ConfigError)
        assert str(alone) == str(with_foreign)
    else:
        assert alone == with_foreign


passwords = st.text(string.ascii_letters + string.digits, min_size=6, max_size=12).map(lambda s: f"Pw{s}Zq")
tokens = st.text(string.ascii_letters + string.digits + "-._~+/", min_size=6, max_size=20).map(lambda s: f"Tk{s}Zq")


@st.composite
def secret_setups(draw: st.DrawFn) -> dict[str, Any]:
    """A database URL holding a password and a token, each placed inline, in a file, in a credential or in the
    environment, possibly several at once, possibly broken (scheme, type, empty, several lines, NUL)."""
    password = draw(passwords)
    scheme = draw(st.sampled_from(["postgresql", "postgres", "postgresql+psycopg2", "sqlite", "mysql", "http", ""]))
    url = f"{scheme}://user:{password}@127.0.0.1:1/db"
    url = draw(st.sampled_from([url] * 3 + [f"{url}\n{url}", f" {url} \n", "", f"{url}\x00", url.replace("://", ":")]))
    places = st.sampled_from(["credential", "file", "inline", "env", "list"])
    token = draw(tokens)
    token_text = draw(st.sampled_from([token, f"{token}\n", f"{token}\n{token}", f"{token}\r", "", " \n"]))
    return {
        "password": password,
        "token": token,
        "url": url,
        "url_in": {draw(places)} | draw(st.sets(places, max_size=2)),
        "token_text": token_text,
        "token_in": draw(st.sets(st.sampled_from(["file", "credential"]), max_size=2)),
        "mode": draw(st.sampled_from([0o600, 0o644, 0o640, 0o604])),
        "fault": draw(
            st.sampled_from([{}] * 3 + [{"sync": {"lease": 1}}, {"backend": {"retries": "x"}}, {"x": {"y": 1}}])
        ),
    }


@bounded(300)
@given(setup=secret_setups())
def test_secrets_never_appear_in_an_error_and_credentials_win(setup: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        credentials = Path(directory, "credentials")
        credentials.mkdir()
        sections: dict[str, Any] = {"backend": {"base_url": "http://127.0.0.1:9"}, "database": {}}
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}
        url_in, token_in = setup["url_in"], setup["token_in"]
        if "inline" in url_in:
            sections["database"]["url"] = setup["url"]
        if "list" in url_in:
            sections["database"]["url"] = [setup["url"]]
        if "env" in url_in:
            env["EMAIL_SYNC_DATABASE_URL"] = setup["url"]
        for where, name, text, key in (
            (url_in, "database-url", setup["url"], ("database", "url_file")),
            (token_in, "backend-token", setup["token_text"], ("backend", "token_file")),
        ):
            if "file" in where:
                secret = Path(directory, name)
                secret.write_text(text)
                secret.chmod(setup["mode"])
                sections[key[0]][key[1]] = str(secret)
            if "credential" in where:
                (credentials / name).write_text(text)
                (credentials / name).chmod(setup["mode"])
        for section, table in setup["fault"].items():
            sections.setdefault(section, {}).update(table)
        with config_at(toml_document(sections)) as path:
            result = outcome(path, env)
    event(type(result).__name__)
    if isinstance(result, ConfigError):
        assert setup["password"] not in str(result)
        assert setup["token"] not in str(result)
        return
    assert all(setup["password"] not in warning and setup["token"] not in warning for warning in result.warnings)
    if "credential" in url_in:
        assert result.database.url == setup["url"].strip()
    if "credential" in token_in:
        assert result.backend.token == setup["token_text"].strip()
    if setup["password"] in result.database.url and "://user:" in result.database.url:
        assert setup["password"] in result.secrets
    if result.backend.token:
        assert result.backend.token in result.secrets
    assert bool(result.warnings) == (setup["mode"] & 0o004 != 0 and bool(url_in & {"file", "credential"} or token_in))


# --- the command line ---------------------------------------------------------------------------------------------

# The database URL always comes from the environment, so that no generated file can point at a real database.
cli_env_names = env_names.filter(lambda n: not n.startswith(("EMAIL_SYNC_DATABASE_URL", "EMAIL_SYNC_TEST")))


@contextlib.contextmanager
def process_env(env: dict[str, str]) -> Iterator[None]:
    """os.environ without the developer's EMAIL_SYNC_* and systemd variables, plus ``env``; signals restored."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    with mock.patch.dict(os.environ):
        for name in list(os.environ):
            if name.startswith("EMAIL_SYNC_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
                del os.environ[name]
        os.environ.update(env)
        try:
            yield
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
            structlog.contextvars.clear_contextvars()


@bounded(150)
@given(document=documents(), env=st.dictionaries(cli_env_names, env_values, max_size=3))
def test_cli_run_exits_78_with_a_line_per_problem_or_75_with_one_and_no_traceback(
    document: bytes, env: dict[str, str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    with (
        config_at(document) as path,
        tempfile.TemporaryDirectory() as scratch,
        contextlib.chdir(scratch),  # a generated relative metrics.textfile lands here, not in the work tree
        process_env({**env, "EMAIL_SYNC_DATABASE_URL": UNREACHABLE_DB}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(["--config", path, "run"])
    event(f"exit {code}")
    assert "Traceback" not in out.getvalue() + err.getvalue()
    assert code in (EXIT_CONFIG, EXIT_TEMPFAIL), out.getvalue()
    # split on "\n" only, as journald does: str.splitlines() would also split inside a value holding U+0085 or U+2028
    lines = [json.loads(line) for line in out.getvalue().split("\n") if line]
    errors = [line for line in lines if line["level"] == "error"]
    if code == EXIT_TEMPFAIL:
        assert len(errors) == 1, lines
        assert errors[0]["event"] == "database_unavailable"
        return
    assert lines == errors and errors, "config errors are the only lines, one per problem"
    for error in errors:
        assert error["event"] == "config_invalid"
        message = error["error"]
        assert message.startswith(f"{path}: ") or any(message.startswith(f"environment {name}: ") for name in env)
