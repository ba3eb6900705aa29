"""Every database URL form libpq documents reaches psycopg2 as libpq means it, is refused in words that name what is
wrong, and never lets its password into a message. SQLAlchemy's own psycopg2 dialect is the oracle of what
psycopg2 is handed (create_connect_args); the real standby tests (tests/integration/test_standby.py) connect with each
form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL

from emailsync import redaction
from emailsync.config import database_url
from emailsync.config.database_url import url_password
from emailsync.config.settings import load
from emailsync.config.values import Invalid
from emailsync.errors import ConfigError
from emailsync.store import db
from emailsync.systemd import logs
from tests.unit.config.test_credentials import UNENCODED_PASSWORD, UNENCODED_URL

PASSWORD = "Sw0rdfish-9Lq"  # no character a URL must encode


def handed_to_psycopg2(url: str) -> dict[str, Any]:
    parsed = database_url.sqlalchemy_url(url)
    args, kwargs = parsed.get_dialect()().create_connect_args(parsed)
    assert args == []
    return dict(kwargs)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
        "postgres://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
        "postgresql+psycopg2://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
        "postgresql://app@/app?host=db1,db2&port=5432,5433&target_session_attrs=read-write",
        "postgresql://app@/app?host=db1:5432&host=db2:5433&target_session_attrs=read-write",
        "host=db1,db2 port=5432,5433 user=app dbname=app target_session_attrs=read-write",
        "  host = db1,db2  port='5432,5433' user=app dbname = 'app' target_session_attrs=read-write",
    ],
)
def test_each_spelling_of_two_hosts_reaches_libpq_as_the_same_host_and_port_lists(url: str) -> None:
    assert handed_to_psycopg2(url) == {
        "host": "db1,db2",
        "port": "5432,5433",
        "user": "app",
        "dbname": "app",
        "target_session_attrs": "read-write",
    }


def test_a_host_without_a_port_in_a_list_takes_the_default_port() -> None:
    assert handed_to_psycopg2("postgresql://app@[::1]:6432,[2001:db8::2]/app") == {
        "host": "::1,2001:db8::2",
        "port": "6432,",
        "user": "app",
        "dbname": "app",
    }


def test_a_socket_directory_in_a_host_list_is_percent_decoded() -> None:
    handed = handed_to_psycopg2("postgresql://app@%2Frun%2Fpostgresql,db2/app")

    assert handed["host"] == "/run/postgresql,db2"


def test_a_url_with_one_host_reaches_psycopg2_as_it_always_did() -> None:
    assert handed_to_psycopg2(f"postgresql://app:{PASSWORD}@db:5433/app?sslmode=require") == {
        "host": "db",
        "port": 5433,
        "user": "app",
        "password": PASSWORD,
        "dbname": "app",
        "sslmode": "require",
    }


def test_a_key_value_string_may_quote_a_password_with_spaces_and_quotes() -> None:
    handed = handed_to_psycopg2(r"host=db dbname=app user=app password='a b\'c'")

    assert handed["password"] == "a b'c"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://app@/app?host=db1,db2&port=5432,5433,5434", "2 hosts but 3 ports"),
        ("postgresql://app@/app?host=db1:5432&host=db2:5433&port=5432", "not both"),
        ("postgresql://app@/app?host=[::1]:5432&host=db2:5433", "IPv6 address goes in the URI"),
        ("postgresql://app@db1:5432,db2:port/app", "1 to 65535"),
        ("postgresql://app@db1:5432,db2:99999/app", "1 to 65535"),
        ("postgresql://app@db1,db2/app?target_session_attrs=writable", "target_session_attrs must be one of"),
        ("postgresql://app@db1/app?load_balance_hosts=yes", "load_balance_hosts must be one of"),
        ("postgresql://app@db1,db2/app?no_such_parameter=1", "no connection parameter no_such_parameter"),
        ("host=db1,db2 dbname", "libpq"),
    ],
)
def test_a_wrong_url_is_refused_naming_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(Invalid, match=words):
        database_url.sqlalchemy_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@db1,db2/app?target_session_attrs=read-write&load_balance_hosts=random",
        "postgresql://app@db1/app?load_balance_hosts=random",
        "host=db1,db2 dbname=app load_balance_hosts=random",
    ],
)
def test_load_balance_hosts_on_a_libpq_older_than_16_is_refused_naming_it_and_the_version(url: str) -> None:
    with pytest.raises(Invalid, match=r"load_balance_hosts needs libpq 16 or later \(this one is 15\.20\)"):
        database_url.sqlalchemy_url(url, libpq_version=150020)


@pytest.mark.parametrize(
    "reason", ['invalid URI query parameter: "load_balance_hosts"', 'invalid connection option "load_balance_hosts"']
)
def test_libpq_15_refusing_load_balance_hosts_is_told_as_the_libpq_it_needs(reason: str) -> None:
    """libpq 15's own words (Debian 12's psql says them for both spellings), as psycopg2 raises them."""
    assert "load_balance_hosts needs libpq 16 or later" in database_url._libpq_refusal(f"invalid dsn: {reason}\n")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@db1:5432,db2:5433/app",
        f"postgresql://app@db1:5432,db2:5433/app?password={PASSWORD}",
        f"postgresql://app@/app?host=db1:5432&host=db2:5433&password={PASSWORD}",
        f"host=db1,db2 user=app password={PASSWORD} dbname=app",
        f"host=db1,db2 user=app password = '{PASSWORD}' dbname=app",
    ],
)
def test_the_password_of_every_form_is_a_secret_and_redacted(url: str, tmp_path: Path) -> None:
    config = tmp_path / "email-sync.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[backend]\nbase_url = "http://127.0.0.1:9"\n')

    loaded = load(str(config), {})
    logs.configure(secrets=loaded.secrets)

    assert PASSWORD in loaded.secrets
    assert PASSWORD not in redaction.redact(f"could not connect with {url}")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@db1:5432,db2:port/app",
        f"postgresql://app@db1:5432,db2:5433/app?password={PASSWORD}&target_session_attrs=rw",
        f"host=db1,db2 password={PASSWORD} port=1,2,3",
        f"postgresql://app:{PASSWORD}%zz@db1,db2/app",
        f"postgresql://app:{PASSWORD}@[::1/app,db2",
        f"host=db1,db2 password={PASSWORD[:6]} {PASSWORD[6:]} dbname=app",
    ],
)
def test_a_refused_url_of_any_form_is_not_shown(url: str, tmp_path: Path) -> None:
    config = tmp_path / "email-sync.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[backend]\nbase_url = "http://127.0.0.1:9"\n')

    with pytest.raises(ConfigError, match=r"database\.url: .*the URL is not shown") as refused:
        db.connect(load(str(config), {}).database)

    assert PASSWORD[:4] not in str(refused.value) and PASSWORD[6:10] not in str(refused.value)


def test_a_password_in_a_connection_string_is_redacted_in_any_message() -> None:
    logs.configure()

    assert redaction.redact("failed: host=db password=hunter2x dbname=app") == "failed: host=db password=*** dbname=app"
    assert redaction.redact("GET /?host=db&password=hunter2x&x=1") == "GET /?host=db&password=***&x=1"


def test_sqlite_urls_are_left_as_they_are() -> None:
    assert database_url.sqlalchemy_url("sqlite:////var/lib/app/app.db") == URL.create(
        "sqlite", database="/var/lib/app/app.db"
    )


@pytest.mark.parametrize(
    ("url", "password"),
    [
        (UNENCODED_URL, UNENCODED_PASSWORD),
        ("postgresql://app:pw%40x@db/app", "pw%40x"),
        ("postgresql://user@tenant:pw@db/app", "pw"),  # an unencoded "@" in the user name
        ("postgresql://app@db/app", None),
        ("postgresql:///app?host=/run/postgresql", None),
    ],
)
def test_the_url_password_is_everything_between_user_colon_and_the_last_at_sign(url: str, password: str) -> None:
    assert url_password(url) == password
