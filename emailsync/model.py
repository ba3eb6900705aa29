"""The values that pass between the database, the HTTP client and the cycle. Plain data in a module of its own, so
that the HTTP layer and the database layer never import each other."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Claim:
    """A user this run holds a lease on."""

    user_id: Any  # the app's id as JSON sends it: an int or a str (a UUID as its text)
    key: str  # the id as text: our state table's key
    email: str
    failures: int  # consecutive failures before this attempt
    # The rest of the state the claim saw, which with the failures makes this attempt's Idempotency-Key: last_sync
    # in a spelling no session setting changes (Dialect.instant; "" for never), and the results ever recorded for
    # this user, which only grow (failures goes back to 0 on a reset, and an old key must not come back with it).
    last_sync: str
    results: int


@dataclass(frozen=True)
class Candidate:
    """A due user as a page lists it: the id to look it up by, and the id as text, our state table's key."""

    user_id: Any
    key: str


@dataclass(frozen=True)
class Result:
    claim: Claim
    ok: bool
    duration_ms: int
    error: str | None = None
    permanent: bool = False  # a failure that retrying will not cure: what quarantine counts


@dataclass
class RunCounts:
    due: int = 0
    synced: int = 0
    failed: int = 0
    skipped: int = 0


def json_id(value: Any) -> Any:
    """The id as the backend gets it in JSON: integers and strings as they are, anything else (UUID) as text."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else str(value)


class Kind(Enum):
    """What a call came to; which answer is which is emailsync.sync.answers's to say."""

    SYNCED = "synced"
    USER_ERROR = "user_error"  # other 4xx: this user's problem
    SERVER_ERROR = "server_error"  # 5xx, or 429/502-504 after the retries
    TRANSPORT = "transport"  # connection refused, reset, timeout, TLS, after the retries
    ENDPOINT = "endpoint"  # 404, 405, 3xx: probably a wrong backend.sync_path
    AUTH = "auth"  # 401, 403: probably a wrong token
    NOT_STARTED = "not_started"  # the run was stopping before this call began
    INTERNAL = "internal"  # an exception of our own code during the call (a bug): this user's failure alone

    @property
    def breaks_circuit(self) -> bool:
        return self in (Kind.SERVER_ERROR, Kind.TRANSPORT, Kind.INTERNAL)

    @property
    def blames_configuration(self) -> bool:
        """The answer says the endpoint or the token is wrong, which is nobody's fault but the configuration's."""
        return self in (Kind.ENDPOINT, Kind.AUTH)


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    kind: Kind
    status: int | None
    attempts: int
    duration_ms: int
    error: str | None = None
    emails_synced: int | None = None
    bug: BaseException | None = None  # an INTERNAL failure's exception, when its traceback is still to be logged
