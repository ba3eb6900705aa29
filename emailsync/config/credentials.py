"""The secrets: the database URL and the backend token, from a systemd credential, a root-only file or the config,
and the spellings of the password a URL holds. Never echoed in an error: messages say where a secret came from."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from emailsync.config import database_url
from emailsync.errors import ConfigError

DATABASE_URL_CREDENTIAL = "database-url"
BACKEND_TOKEN_CREDENTIAL = "backend-token"
CREDSTORE = "/etc/credstore"  # where email-sync.service's LoadCredential= finds email-sync.<credential>


@dataclass(frozen=True)
class SecretSource:
    """Where one secret may come from, in order: its systemd credential, a file named by a key, the key itself."""

    credential: str  # the credential's name, e.g. database-url
    file_key: str  # e.g. database.url_file
    file: str  # that key's value; empty when unset
    inline: str  # the inline key's value (database.url); empty when unset or when there is no such key
    inline_variable: str  # the environment variable that may have set the inline value


def load(source: SecretSource, path: str, env: Mapping[str, str], warnings: list[str]) -> tuple[str, str]:
    """The secret, and where it came from, for a message about it.

    Outside the unit (root running `email-sync migrate` or `check`), the credential's source file in the
    credstore stands in for it, so the operator's commands see the same secrets as the service.
    """
    credentials = env.get("CREDENTIALS_DIRECTORY")
    inline_key = source.file_key.removesuffix("_file")
    if credentials and Path(credentials, source.credential).exists():
        what = f"{path}: credential {source.credential}"
        return _read_secret(Path(credentials, source.credential), what, warnings), what
    stored = Path(CREDSTORE, f"email-sync.{source.credential}")
    if not credentials and not source.file and not source.inline and os.access(stored, os.R_OK):
        what = f"{path}: credential {source.credential} ({stored})"
        return _read_secret(stored, what, warnings), what
    if source.file:
        if source.inline:
            raise ConfigError(f"{path}: set either {source.file_key} or {inline_key}, not both")
        what = f"{path}: {source.file_key}"
        return _read_secret(Path(source.file), what, warnings), f"{what} {source.file}"
    from_env = f" (environment {source.inline_variable})" if source.inline_variable in env else ""
    return source.inline, f"{path}: {inline_key}{from_env}"


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


def check_database_url(path: str, origin: str, url: str) -> None:
    """What can be told from the text alone when the config loads; the rest of a URL (its hosts, ports and
    parameters) is read when a command connects (db.connect), so `check` can report it among its other lines."""
    if not database_url.is_postgres(url) and database_url.scheme(url) != "sqlite":
        raise ConfigError(
            f"{path}: database.url must start with postgresql:// or sqlite:/// or be a libpq key=value string "
            "(the value is not shown)"
        )
    if database_url.is_postgres(url) and "@" in (database_url.url_password(url) or ""):  # a file's path may hold both
        raise ConfigError(
            f"{origin}: the password in the database URL must be percent-encoded (@ as %40, : as %3A, / as %2F); "
            "the URL is not shown"
        )


def url_secrets(url: str) -> list[str]:
    """The database password in each spelling that can reach a message (database_url.password_spellings)."""
    return database_url.password_spellings(url)
