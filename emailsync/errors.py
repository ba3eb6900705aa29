"""The expected failures of email-sync and the exit code each one maps to.

Every failure an operator can cause or fix is one of these types; the CLI turns it into one log line and its exit
code. Anything else is a bug: it leaves a traceback and exits 1.
"""

import os

EXIT_OK = 0
EXIT_BUG = 1
EXIT_NO = 2  # an operator command's answer is no: status unhealthy, a check failed, the user's sync failed
EXIT_USAGE = os.EX_USAGE  # 64: the command names something that does not exist (e.g. no such user)
EXIT_TEMPFAIL = os.EX_TEMPFAIL  # 75: try again later (database or backend down)
EXIT_CONFIG = os.EX_CONFIG  # 78: fix the configuration (or the schema) first


class EmailSyncError(Exception):
    """An expected failure: its message is the one clear line shown to the operator."""

    exit_code = EXIT_BUG
    event = "failed"

    @property
    def problems(self) -> tuple[str, ...]:
        """Its lines, each logged on its own: one, unless the failure gathers several."""
        return (str(self),)


class ConfigError(EmailSyncError):
    """The configuration (or what it points at) is wrong; retrying will not help. It may list several problems,
    one line each (every bad key of a file), so the operator fixes them all in one go."""

    exit_code = EXIT_CONFIG
    event = "config_invalid"

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self._problems = problems

    @property
    def problems(self) -> tuple[str, ...]:
        return self._problems


class SchemaError(ConfigError):
    """email-sync's own tables are missing or older than this version, or the app's table lacks a column."""

    event = "schema_invalid"


class EndpointError(ConfigError):
    """The backend says the sync endpoint or our credentials are wrong for everyone, not for one user."""

    event = "endpoint_misconfigured"


class UsageError(EmailSyncError):
    """The command line names something that is not there."""

    exit_code = EXIT_USAGE
    event = "usage_error"


class Refused(EmailSyncError):
    """The command cannot be done in the state things are in (e.g. `sync` of a parked user)."""

    exit_code = EXIT_NO
    event = "refused"


class TemporaryError(EmailSyncError):
    """Something we depend on is down; the next timer tick may succeed."""

    exit_code = EXIT_TEMPFAIL
    event = "temporarily_unavailable"


class DatabaseUnavailable(TemporaryError):
    event = "database_unavailable"


class BackendUnavailable(TemporaryError):
    event = "backend_unavailable"


class CircuitOpen(TemporaryError):
    """Too many consecutive transport failures or 5xx: stop before we hammer a struggling backend."""

    event = "circuit_open"
