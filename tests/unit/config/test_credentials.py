"""The secrets: the database URL and the backend token from a systemd credential, a file or the config (in that
order), refused in words that never show them, and a warning for a file others may read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emailsync.config.settings import load
from tests.unit.config.test_settings import PASSWORD, TOKEN, UNREACHABLE_DB, config_file, error_of, secret_file


def test_url_file_supplies_the_database_url(tmp_path: Path) -> None:
    url_file = secret_file(tmp_path, "db-url", f"postgresql://u:{PASSWORD}@db/app\n")
    config = load(config_file(tmp_path, database={"url": None, "url_file": url_file}), {})
    assert config.database.url == f"postgresql://u:{PASSWORD}@db/app"
    assert PASSWORD in config.secrets


def test_token_file_supplies_the_token(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", TOKEN + "\n")
    config = load(config_file(tmp_path, backend={"token_file": token_file}), {})
    assert config.backend.token == TOKEN
    assert TOKEN in config.secrets


def test_credential_takes_precedence_over_url_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "database-url", "postgresql://cred@db/app")
    url_file = secret_file(tmp_path, "db-url", "postgresql://file@db/app")
    path = config_file(tmp_path, database={"url": None, "url_file": url_file})
    config = load(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.database.url == "postgresql://cred@db/app"


def test_credential_takes_precedence_over_inline_url(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "database-url", "postgresql://cred@db/app")
    config = load(config_file(tmp_path), {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.database.url == "postgresql://cred@db/app"


def test_credential_takes_precedence_over_token_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "backend-token", "from-credential")
    token_file = secret_file(tmp_path, "token", "from-file")
    path = config_file(tmp_path, backend={"token_file": token_file})
    assert load(path, {"CREDENTIALS_DIRECTORY": str(credentials)}).backend.token == "from-credential"


def test_credentials_directory_without_the_credential_falls_back_to_the_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token_file = secret_file(tmp_path, "token", "from-file")
    path = config_file(tmp_path, backend={"token_file": token_file})
    assert load(path, {"CREDENTIALS_DIRECTORY": str(credentials)}).backend.token == "from-file"


def test_url_and_url_file_together_are_refused(tmp_path: Path) -> None:
    url_file = secret_file(tmp_path, "db-url", "postgresql://file@db/app")
    path = config_file(tmp_path, database={"url_file": url_file})
    message = error_of(path)
    assert message.startswith(f"{path}: set either database.url_file or database.url")


def test_missing_secret_file_names_the_key_and_both_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "token")
    path = config_file(tmp_path, backend={"token_file": missing})
    message = error_of(path)
    assert message.startswith(f"{path}: backend.token_file: ")
    assert missing in message


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, backend={"token_file": str(tmp_path)})
    assert error_of(path).startswith(f"{path}: backend.token_file: cannot read")


def test_unreadable_credential_names_the_credential(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    (credentials / "backend-token").mkdir(parents=True)
    path = config_file(tmp_path)
    message = error_of(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert message.startswith(f"{path}: credential backend-token: cannot read")


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", "\n")
    assert "is empty" in error_of(config_file(tmp_path, backend={"token_file": token_file}))


def test_secret_file_not_utf8_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xfftoken")
    assert "not valid UTF-8" in error_of(config_file(tmp_path, backend={"token_file": str(token_file)}))


def test_token_of_several_lines_is_refused_without_showing_it(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", f"{TOKEN}\n{TOKEN}-2\n")
    message = error_of(config_file(tmp_path, backend={"token_file": token_file}))
    assert "backend.token_file" in message
    assert "single line" in message
    assert TOKEN not in message


@pytest.mark.parametrize("control", ["\x00", "\t", "\x1b"])
def test_secret_file_with_a_control_character_is_refused_without_showing_it(tmp_path: Path, control: str) -> None:
    # a NUL in the database URL made psycopg2 raise ValueError: exit 1 and a traceback, found by the CLI property
    url_file = secret_file(tmp_path, "db-url", f"postgresql://u:{PASSWORD}@db/app{control}x")
    message = error_of(config_file(tmp_path, database={"url": None, "url_file": url_file}))
    assert "database.url_file" in message
    assert "control characters" in message
    assert PASSWORD not in message


def test_password_in_database_url_never_in_error(tmp_path: Path) -> None:
    url = f"mysql://admin:{PASSWORD}@db/app"
    url_file = secret_file(tmp_path, "db-url", url)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "database-url", url)
    failures = [
        (config_file(tmp_path, database={"url": url}), {}),
        (config_file(tmp_path, database={"url": [url]}), {}),
        (config_file(tmp_path, database={"url": None, "url_file": url_file}), {}),
        (config_file(tmp_path), {"CREDENTIALS_DIRECTORY": str(credentials)}),
        (config_file(tmp_path), {"EMAIL_SYNC_DATABASE_URL": url}),
        (config_file(tmp_path), {"EMAIL_SYNC_DATABASE_URL": url + "\x00"}),
        (config_file(tmp_path, database={"url_file": url_file}), {}),
    ]
    for path, env in failures:
        message = error_of(path, env)
        assert "database.url" in message or "database-url" in message
        assert PASSWORD not in message


UNENCODED_PASSWORD = "p@ss:w0rd/Zq@9"  # SQLAlchemy would take "ss:w0rd/Zq@9@db:5432" for the host and port


UNENCODED_URL = f"postgresql://app:{UNENCODED_PASSWORD}@db:5432/app"


def test_both_the_written_and_the_decoded_password_are_secrets(tmp_path: Path) -> None:
    config = load(config_file(tmp_path, database={"url": "postgresql://app:pw%2Fsecret@db/app"}), {})

    assert {"pw%2Fsecret", "pw/secret"} <= set(config.secrets)


@pytest.mark.parametrize("place", ["inline", "env", "url_file", "credential"])
def test_a_password_with_an_unencoded_at_sign_is_refused_naming_where_the_url_came_from(
    tmp_path: Path, place: str
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    database: dict[str, Any] = {"url": None}
    if place == "inline":
        database["url"] = UNENCODED_URL
    elif place == "env":
        env["EMAIL_SYNC_DATABASE_URL"] = UNENCODED_URL
    elif place == "url_file":
        database["url_file"] = secret_file(tmp_path, "db-url", UNENCODED_URL)
    else:
        secret_file(credentials, "database-url", UNENCODED_URL)

    message = error_of(config_file(tmp_path, database=database), env)

    where = {
        "inline": "database.url",
        "env": "EMAIL_SYNC_DATABASE_URL",
        "url_file": f"database.url_file {tmp_path / 'db-url'}",
        "credential": "credential database-url",
    }
    assert where[place] in message and "must be percent-encoded" in message
    assert not any(part in message for part in ("p@ss", "ss:w0rd", "w0rd", "Zq@9"))


def test_a_sqlite_path_may_hold_at_signs_and_colons(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a:b@c/app.db"
    assert load(config_file(tmp_path, database={"url": url}), {}).database.url == url


def test_a_token_that_is_not_ascii_is_refused_naming_its_file(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", "tok-€-Secret")

    message = error_of(config_file(tmp_path, backend={"token_file": token_file}))

    assert f"backend.token_file {token_file}" in message and "ASCII" in message
    assert "tok-" not in message


def test_secret_file_readable_by_others_warns(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", TOKEN, mode=0o644)
    config = load(config_file(tmp_path, backend={"token_file": token_file}), {})
    assert len(config.warnings) == 1
    assert token_file in config.warnings[0]
    assert TOKEN not in config.warnings[0]


def test_credential_readable_by_others_warns(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "database-url", UNREACHABLE_DB, mode=0o604)
    config = load(config_file(tmp_path), {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert [str(credentials / "database-url") in w for w in config.warnings] == [True]


def test_private_secret_file_does_not_warn(tmp_path: Path) -> None:
    token_file = secret_file(tmp_path, "token", TOKEN, mode=0o640)
    assert load(config_file(tmp_path, backend={"token_file": token_file}), {}).warnings == ()


def test_outside_the_unit_the_credstore_file_stands_in_for_the_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emailsync.config import credentials

    monkeypatch.setattr(credentials, "CREDSTORE", str(tmp_path))
    stored = tmp_path / "email-sync.database-url"
    stored.write_text("postgresql://app:pw@db/app\n")
    stored.chmod(0o600)
    path = tmp_path / "email-sync.toml"
    path.write_text('[backend]\nbase_url = "http://127.0.0.1:8000"\n')

    assert load(str(path), {}).database.url == "postgresql://app:pw@db/app"
    assert load(str(path), {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}, need_database=False).database.url == ""
