"""The config contract: a TOML file and EMAIL_SYNC_<SECTION>_<KEY> overrides, and every mistake reported as one line
naming the key and the file (exit 78), never a secret. The secrets' own sources are test_credentials.py's.

``load()`` gets its environment as an explicit dict, so the developer's own EMAIL_SYNC_* variables cannot leak in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from emailsync.commands import cli
from emailsync.config.settings import DEFAULT_PATH, KEYS, Config, config_path, load
from emailsync.errors import EXIT_CONFIG, ConfigError
from tests.conftest import write_config

UNREACHABLE_DB = "postgresql://u:pw@127.0.0.1:1/x"
PASSWORD = "Hunter2-db-Secret"
TOKEN = "tok-Very-Secret-123"
BASE: dict[str, dict[str, Any]] = {
    "database": {"url": UNREACHABLE_DB},
    "backend": {"base_url": "http://127.0.0.1:9"},
}


def config_file(tmp_path: Path, **sections: dict[str, Any]) -> str:
    """BASE with ``sections`` merged in (a value of None drops that key), written to email-sync.toml."""
    merged = {name: dict(keys) for name, keys in BASE.items()}
    for name, keys in sections.items():
        merged.setdefault(name, {}).update(keys)
    merged = {name: {k: v for k, v in keys.items() if v is not None} for name, keys in merged.items()}
    return str(write_config(tmp_path / "email-sync.toml", merged))


def raw_file(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "email-sync.toml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return str(path)


def secret_file(tmp_path: Path, name: str, content: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return str(path)


def error_of(path: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, {} if env is None else env)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- a valid file -------------------------------------------------------------------------------------------------


def test_minimal_config_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load(config_file(tmp_path), {})
    assert isinstance(config, Config)
    assert config.database.url == UNREACHABLE_DB
    assert config.backend.sync_url == "http://127.0.0.1:9/api/v1/test/sync/start"
    assert config.backend.health_url == "http://127.0.0.1:9/health"
    assert config.backend.token is None
    assert config.sync.interval == 3600.0
    assert config.sync.lease == 900.0
    assert config.users.table == "users"
    assert config.logging.level == "info"
    assert config.warnings == ()


def test_every_default_parses_with_its_own_key() -> None:
    for key in KEYS:
        if isinstance(key.default, str | int | float) and key.default != "":
            assert key.parse(key.default) == key.default, key.dotted


def test_source_is_the_file_loaded(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    assert load(path, {}).source == path


def test_host_id_defaults_to_the_hostname(tmp_path: Path) -> None:
    assert load(config_file(tmp_path), {}).sync.host_id == os.uname().nodename


def test_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    config = load(config_file(tmp_path, backend={"base_url": "https://api.example.com/"}), {})
    assert config.backend.sync_url == "https://api.example.com/api/v1/test/sync/start"


def test_users_filter_is_stripped(tmp_path: Path) -> None:
    config = load(config_file(tmp_path, users={"filter": "  active AND NOT deleted \n"}), {})
    assert config.users.filter == "active AND NOT deleted"


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load(config_file(tmp_path, logging={"level": "DEBUG"}), {}).logging.level == "debug"


def test_durations_in_the_file_accept_numbers_and_units(tmp_path: Path) -> None:
    path = config_file(tmp_path, sync={"interval": "1h30m", "shutdown_grace": 20}, backend={"retry_backoff": "250ms"})
    config = load(path, {})
    assert config.sync.interval == 5400.0
    assert config.sync.shutdown_grace == 20.0
    assert config.backend.retry_backoff == 0.25


# --- the config file itself ---------------------------------------------------------------------------------------


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert "not found" in message


def test_unreadable_config_file_names_it(tmp_path: Path) -> None:
    # a directory: unreadable as a file even for root, who ignores file modes
    message = error_of(str(tmp_path))
    assert message.startswith(f"{tmp_path}: cannot read config file")


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = raw_file(tmp_path, '[backend]\nbase_url = "http://x"\nretries = = 3\n')
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b'[backend]\nbase_url = "http://\xff"\n')
    message = error_of(path)
    assert message.startswith(f"{path}: not valid UTF-8")


def test_a_file_starting_with_a_utf8_byte_order_mark_loads(tmp_path: Path) -> None:
    path = raw_file(tmp_path, "\ufeff[backend]\nbase_url = 'http://127.0.0.1:9'\nretries = 5\n".encode())

    assert load(path, {"EMAIL_SYNC_DATABASE_URL": "sqlite:///x.db"}).backend.retries == 5


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    path = raw_file(tmp_path, '[backend]\nbase_url = "http://a"\nbase_url = "http://b"\n')
    assert error_of(path).startswith(f"{path}: invalid TOML")


def test_integer_of_too_many_digits_is_invalid_toml_not_a_crash(tmp_path: Path) -> None:
    path = raw_file(tmp_path, "[sync]\nbatch_size = " + "9" * 5000 + "\n")
    assert error_of(path).startswith(f"{path}: invalid TOML")


def test_unknown_section_is_named_with_its_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, databse={"url": "x"})
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert "[databse]" in message


def test_unknown_key_is_named_with_its_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"retires": 3})
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert "backend.retires" in message


def test_section_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = raw_file(tmp_path, 'sync = 5\n[database]\nurl = "postgresql://h/db"\n[backend]\nbase_url = "http://h"\n')
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert "sync must be a table" in message


def test_wrong_type_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"concurrency": "many"})
    message = error_of(path)
    assert message.startswith(f"{path}: backend.concurrency ")
    assert "integer" in message


def test_concurrency_may_be_auto_with_its_ceiling(tmp_path: Path) -> None:
    loaded = load(config_file(tmp_path, backend={"concurrency": "auto", "max_concurrency": 128}), {})

    assert (loaded.backend.concurrency, loaded.backend.max_concurrency) == ("auto", 128)


def test_concurrency_neither_auto_nor_a_number_names_the_key_and_both_choices(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"concurrency": "automatic"})
    message = error_of(path)
    assert message.startswith(f"{path}: backend.concurrency ")
    assert '"auto" or an integer between 1 and 1024' in message


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    assert "backend.retries" in error_of(config_file(tmp_path, backend={"retries": True}))


def test_integer_out_of_range_names_the_key(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path, sync={"batch_size": 0}))
    assert "sync.batch_size must be between 1 and 10000" in message


@pytest.mark.parametrize("key", ["sync.batch_size", "sync.lease", "backend.max_rate", "sync.host_id"])
def test_huge_hex_integer_is_refused_not_a_crash(tmp_path: Path, key: str) -> None:
    # tomllib reads 0xfff... of any length; repr() of such an integer (6000 decimal digits) raises
    section, name = key.split(".")
    path = raw_file(tmp_path, f"[{section}]\n{name} = 0x{'f' * 5000}\n")
    assert errors_of(path)[0].startswith(f"{path}: {key} ")  # then the required keys this file lacks


def test_duration_error_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, sync={"interval": "soon"})
    message = error_of(path)
    assert message.startswith(f"{path}: sync.interval ")
    assert "'soon'" in message


def test_huge_duration_is_refused(tmp_path: Path) -> None:
    # past a year it is a typo, and far past it int(ms) and Event.wait() overflow downstream
    assert "sync.interval" in error_of(config_file(tmp_path, sync={"interval": 1.7e308}))


def test_statement_timeout_beyond_postgres_limit_is_refused(tmp_path: Path) -> None:
    # PostgreSQL would refuse the connection: a config error, not "database unavailable"
    message = error_of(config_file(tmp_path, database={"statement_timeout": "25d"}))
    assert "database.statement_timeout" in message


def test_statement_timeout_below_a_millisecond_is_refused(tmp_path: Path) -> None:
    # it would round to statement_timeout=0, which in PostgreSQL means no timeout at all
    assert "database.statement_timeout" in error_of(config_file(tmp_path, database={"statement_timeout": 0.0004}))


def test_sql_identifier_is_validated(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path, users={"table": "users; DROP TABLE users"}))
    assert "users.table must be an SQL name" in message


def test_schema_qualified_table_is_accepted(tmp_path: Path) -> None:
    assert load(config_file(tmp_path, users={"table": "app.users"}), {}).users.table == "app.users"


def test_nul_character_is_refused(tmp_path: Path) -> None:
    assert "users.filter must not contain NUL" in error_of(config_file(tmp_path, users={"filter": "a\x00b"}))


def test_unknown_log_level_is_refused(tmp_path: Path) -> None:
    assert "logging.level must be one of" in error_of(config_file(tmp_path, logging={"level": "loud"}))


def test_sync_path_must_start_with_a_slash(tmp_path: Path) -> None:
    assert "backend.sync_path" in error_of(config_file(tmp_path, backend={"sync_path": "api/sync"}))


def test_negative_rate_is_refused(tmp_path: Path) -> None:
    assert "backend.max_rate" in error_of(config_file(tmp_path, backend={"max_rate": -1}))


def test_rate_too_small_to_wait_for_is_refused(tmp_path: Path) -> None:
    # 1e-320 requests/s: a gap of inf seconds between requests, and Event.wait(inf) raises OverflowError
    assert "backend.max_rate" in error_of(config_file(tmp_path, backend={"max_rate": 1e-320}))


def test_unreadable_ca_file_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    message = error_of(config_file(tmp_path, backend={"ca_file": missing}))
    assert "backend.ca_file" in message
    assert missing in message


# --- required values ----------------------------------------------------------------------------------------------


def test_missing_base_url_is_required_and_names_its_variable(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"base_url": None})
    message = error_of(path)
    assert message.startswith(f"{path}: backend.base_url is required")
    assert "EMAIL_SYNC_BACKEND_BASE_URL" in message


def test_missing_database_url_is_required(tmp_path: Path) -> None:
    path = config_file(tmp_path, database={"url": None})
    assert error_of(path).startswith(f"{path}: database.url is required")


# --- the environment ----------------------------------------------------------------------------------------------


def test_env_overrides_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"sync_path": "/from/file"})
    config = load(path, {"EMAIL_SYNC_BACKEND_SYNC_PATH": "/from/env"})
    assert config.backend.sync_path == "/from/env"


def test_env_alone_can_supply_a_required_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"base_url": None})
    config = load(path, {"EMAIL_SYNC_BACKEND_BASE_URL": "http://from-env:8000"})
    assert config.backend.base_url == "http://from-env:8000"


def test_env_strings_are_parsed_by_the_key_type(tmp_path: Path) -> None:
    env = {
        "EMAIL_SYNC_BACKEND_RETRIES": "1",
        "EMAIL_SYNC_BACKEND_MAX_RATE": "2.5",
        "EMAIL_SYNC_SYNC_INTERVAL": "5m",
        "EMAIL_SYNC_LOGGING_LEVEL": "warning",
    }
    config = load(config_file(tmp_path), env)
    assert config.backend.retries == 1
    assert config.backend.max_rate == 2.5
    assert config.sync.interval == 300.0
    assert config.logging.level == "warning"


# A valid value for every key, so that each can be set from the environment; a new key needs one here.
ENV_SAMPLES = {
    "database.url": ("sqlite:///tmp/app.db", "sqlite:///tmp/app.db"),
    "database.url_file": None,
    "database.connect_timeout": ("7s", 7.0),
    "database.statement_timeout": ("1m", 60.0),
    "database.migrate": ("Manual", "manual"),
    "users.table": ("app.people", "app.people"),
    "users.id_column": ("pk", "pk"),
    "users.email_column": ("mail", "mail"),
    "users.last_sync_column": ("synced_at", "synced_at"),
    "users.last_sync_timezone": ("Asia/Kolkata", "Asia/Kolkata"),
    "users.filter": ("active", "active"),
    "sync.interval": ("2h", 7200.0),
    "sync.max_users_per_run": ("5", 5),
    "sync.max_emails": ("7", 7),
    "sync.batch_size": ("9", 9),
    "sync.lease": ("2h", 7200.0),
    "sync.shutdown_grace": ("4s", 4.0),
    "sync.host_id": ("box-1", "box-1"),
    "sync.failure_backoff": ("1m", 60.0),
    "sync.failure_backoff_max": ("1d", 86400.0),
    "sync.circuit_breaker": ("11", 11),
    "sync.endpoint_probe": ("2", 2),
    "sync.quarantine_after": ("0", 0),
    "sync.quarantine_statuses": ("422, 410", (410, 422)),
    "backend.base_url": ("https://b.example", "https://b.example"),
    "backend.sync_path": ("/sync", "/sync"),
    "backend.health_path": ("/up", "/up"),
    "backend.token_file": None,
    "backend.ca_file": ("/", "/"),
    "backend.connect_timeout": ("1s", 1.0),
    "backend.read_timeout": ("2s", 2.0),
    "backend.call_timeout": ("1min 5s", 65.0),
    "backend.concurrency": ("3", 3),
    "backend.max_concurrency": ("128", 128),
    "backend.max_rate": ("0.5", 0.5),
    "backend.retries": ("0", 0),
    "backend.retry_backoff": ("100ms", 0.1),
    "backend.retry_backoff_max": ("5s", 5.0),
    "logging.level": ("ERROR", "error"),
    "status.timer_interval": ("10m", 600.0),
    "status.missed_intervals": ("5", 5),
    "status.max_staleness": ("3h", 10800.0),
    "metrics.textfile": ("/var/lib/node_exporter/email_sync.prom", "/var/lib/node_exporter/email_sync.prom"),
    "alert.webhook_url": ("https://hooks.example.com/T1", "https://hooks.example.com/T1"),
    "alert.command": ("/usr/local/bin/page-me", "/usr/local/bin/page-me"),
    "alert.after": ("1", 1),
    "monitor.ping_url": (
        "https://hc-ping.com/5f0c8a1e-3b7d-4c2a-9e61-d0b4a7c3f218",
        "https://hc-ping.com/5f0c8a1e-3b7d-4c2a-9e61-d0b4a7c3f218",
    ),
    "monitor.ping_style": ("Uptime-Kuma", "uptime-kuma"),
    "monitor.ping_timeout": ("3s", 3.0),
}


def test_every_key_has_an_env_sample() -> None:
    assert {key.dotted for key in KEYS} == set(ENV_SAMPLES)


@pytest.mark.parametrize("key", [k for k in KEYS if ENV_SAMPLES[k.dotted]], ids=lambda k: k.env)
def test_every_key_is_overridable_by_its_env_variable(tmp_path: Path, key: Any) -> None:
    text, expected = ENV_SAMPLES[key.dotted]
    config = load(config_file(tmp_path), {key.env: text})
    assert getattr(getattr(config, key.section), key.name) == expected


def test_env_value_of_wrong_type_names_the_variable(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path), {"EMAIL_SYNC_BACKEND_RETRIES": "many"})
    assert message.startswith("environment EMAIL_SYNC_BACKEND_RETRIES: backend.retries ")


def test_env_unknown_key_of_a_known_section_names_the_variable(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path), {"EMAIL_SYNC_BACKEND_TOKEN": "x"})
    assert message.startswith("environment EMAIL_SYNC_BACKEND_TOKEN: unknown key backend.token")
    assert "x" not in message.removeprefix("environment EMAIL_SYNC_BACKEND_TOKEN: unknown key backend.token")


def test_env_variables_of_other_prefixes_are_ignored(tmp_path: Path) -> None:
    env = {
        "EMAIL_SYNC_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "EMAIL_SYNC_CONFIG": "/elsewhere.toml",
        "EMAIL_SYNCHRONIZER_BACKEND_RETRIES": "many",
        "email_sync_backend_retries": "many",
        "OTHER_BACKEND_RETRIES": "many",
    }
    assert load(config_file(tmp_path), env) == load(config_file(tmp_path), {})


def test_load_reads_the_process_environment_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_SYNC_BACKEND_HEALTH_PATH", "/ping")
    assert load(config_file(tmp_path)).backend.health_path == "/ping"


def test_config_path_prefers_the_option_then_the_variable_then_the_default() -> None:
    env = {"EMAIL_SYNC_CONFIG": "/from/env.toml"}
    assert config_path("/from/cli.toml", env) == "/from/cli.toml"
    assert config_path(None, env) == "/from/env.toml"
    assert config_path(None, {}) == DEFAULT_PATH == "/etc/email-sync/email-sync.toml"


# --- cross-key checks ---------------------------------------------------------------------------------------------


def test_lease_shorter_than_calls_is_refused(tmp_path: Path) -> None:
    # (retries + 1) * (retry_backoff_max + call_timeout) = 4 * (30 + 35) = 260s; twice: 520s
    path = config_file(tmp_path, sync={"lease": "519s"})
    message = error_of(path)
    assert message.startswith(f"{path}: sync.lease (519s) must be at least twice")
    assert "260s" in message


def test_lease_twice_the_longest_call_is_accepted(tmp_path: Path) -> None:
    assert load(config_file(tmp_path, sync={"lease": "520s"}), {}).sync.lease == 520.0


def test_lease_check_counts_timeouts_from_the_environment(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path), {"EMAIL_SYNC_BACKEND_CALL_TIMEOUT": "10m"})
    assert "sync.lease" in message


def test_base_url_with_credentials_is_refused(tmp_path: Path) -> None:
    for url in (f"http://admin:{PASSWORD}@api.example.com", f"ftp://admin:{PASSWORD}@api.example.com"):
        message = error_of(config_file(tmp_path, backend={"base_url": url}))
        assert "backend.base_url must not contain credentials" in message
        assert PASSWORD not in message


def test_base_url_that_urlsplit_rejects_does_not_echo_credentials(tmp_path: Path) -> None:
    # urlsplit quotes the whole netloc in its NFKC error
    message = error_of(config_file(tmp_path, backend={"base_url": f"http://admin:{PASSWORD}\u2100@host"}))
    assert "backend.base_url" in message
    assert PASSWORD not in message


def test_base_url_with_a_token_in_the_query_is_refused(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path, backend={"base_url": f"http://api.example.com/?token={TOKEN}"}))
    assert "backend.base_url" in message
    assert TOKEN not in message


def test_base_url_must_be_http(tmp_path: Path) -> None:
    assert "backend.base_url must be an http" in error_of(config_file(tmp_path, backend={"base_url": "ftp://h"}))


def test_a_path_that_is_not_ascii_is_percent_encoded_as_utf8(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"sync_path": "/api/büro/sync", "health_path": "/état"})
    config = load(path, {})
    assert (config.backend.sync_path, config.backend.health_path) == ("/api/b%C3%BCro/sync", "/%C3%A9tat")
    assert config.backend.sync_url == "http://127.0.0.1:9/api/b%C3%BCro/sync"


def test_a_host_that_is_not_ascii_becomes_its_idna_form(tmp_path: Path) -> None:
    config = load(config_file(tmp_path, backend={"base_url": "https://Bücher.example:8443/äpi"}), {})
    assert config.backend.base_url == "https://xn--bcher-kva.example:8443/%C3%A4pi"


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:9", "http://[::1]:8000", "https://API.Example.com/v1", "http://sync_backend:8000"]
)
def test_an_ascii_base_url_is_kept_as_written(base_url: str, tmp_path: Path) -> None:
    assert load(config_file(tmp_path, backend={"base_url": base_url}), {}).backend.base_url == base_url


def test_a_path_that_is_not_utf8_in_the_environment_is_refused_naming_its_variable(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path), {"EMAIL_SYNC_BACKEND_SYNC_PATH": "/sync/\udcff"})
    assert message == "environment EMAIL_SYNC_BACKEND_SYNC_PATH: backend.sync_path must be valid UTF-8"


def test_base_url_with_a_bad_port_is_refused(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path, backend={"base_url": "http://h:99999"}))
    assert "backend.base_url" in message


# --- every error at once -----------------------------------------------------------------------------------------


def errors_of(path: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, {} if env is None else env)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return list(caught.value.problems)


def test_every_bad_key_of_a_file_is_reported_at_once_each_line_naming_key_and_file(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        backend={"base_url": None, "retries": -1},
        sync={"interval": "soon", "batchsize": 10},
        logging={"level": "loud"},
    )

    errors = errors_of(path)

    assert [error.split(" ")[:2] for error in errors] == [
        [f"{path}:", "backend.retries"],
        [f"{path}:", "sync.interval"],
        [f"{path}:", "unknown"],
        [f"{path}:", "logging.level"],
        [f"{path}:", "backend.base_url"],
    ]
    assert "sync.batchsize" in errors[2] and "is required" in errors[4]


def test_bad_keys_in_the_file_and_in_the_environment_are_reported_together(tmp_path: Path) -> None:
    path = config_file(tmp_path, sync={"max_emails": 0})

    errors = errors_of(path, {"EMAIL_SYNC_BACKEND_CONCURRENCY": "lots", "EMAIL_SYNC_SYNC_NOPE": "1"})

    assert len(errors) == 3
    assert errors[0].startswith(f"{path}: sync.max_emails")
    assert sorted(error.split(":")[0] for error in errors[1:]) == [
        "environment EMAIL_SYNC_BACKEND_CONCURRENCY",
        "environment EMAIL_SYNC_SYNC_NOPE",
    ]


def test_a_bad_key_and_a_bad_secret_file_are_reported_together(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        database={"url": None, "url_file": str(tmp_path / "missing")},
        backend={"read_timeout": "forever", "ca_file": str(tmp_path / "no-ca.pem")},
    )

    errors = errors_of(path)

    assert len(errors) == 3, errors
    assert "backend.read_timeout" in errors[0]
    assert "database.url_file" in errors[1] and "does not exist" in errors[1]
    assert "backend.ca_file" in errors[2]


def test_a_key_that_fails_is_not_also_reported_by_the_checks_built_on_it(tmp_path: Path) -> None:
    """sync.lease is checked against the retries; a bad backend.retries is one error, not two."""
    errors = errors_of(config_file(tmp_path, backend={"retries": "many"}, sync={"lease": "1s"}))

    assert len(errors) == 1 and "backend.retries" in errors[0]


def test_run_with_several_bad_keys_exits_78_and_logs_one_line_per_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, sync={"interval": "soon", "max_emails": 0})

    code = cli.main(["--config", path, "run"])

    assert code == EXIT_CONFIG
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["event"] for event in events] == ["config_invalid", "config_invalid"]
    assert [event["error"].split(" ")[1] for event in events] == ["sync.interval", "sync.max_emails"]
    assert all(event["exit_code"] == EXIT_CONFIG for event in events)


def test_database_migrate_accepts_only_auto_or_manual(tmp_path: Path) -> None:
    message = error_of(config_file(tmp_path, database={"migrate": "sometimes"}))

    assert "database.migrate" in message and "auto, manual" in message
