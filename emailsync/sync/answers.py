"""What an answer from the backend means: every set of statuses and every rule about them, stated here once.

2xx synced; 409/429/502/503/504 are transient and worth retrying (so are transport errors: no complete answer);
404/405/3xx say the endpoint is wrong and 401/403 that the token is; any other 5xx is the backend's failure and any
other status this user's. Some transient answers say more: that the backend is overrun (what cuts concurrency = "auto"),
or, with a Retry-After, that everyone should wait. Whether a failure is permanent (what quarantine counts) is decided
here too. The sync call, the health check and `check` all go by these rules; what to do about an answer (retry, cool
down, open the circuit) is for their callers.
"""

from __future__ import annotations

import email.utils
import math
import time

from emailsync.model import Kind

# Worth retrying within the call. 409 is what the Idempotency-Key draft answers while a first call with the same key
# is still running: the retry, with the same key, gets that call's answer once it is done.
TRANSIENT = frozenset({409, 429, 502, 503, 504})
# 4xx answers that blame the configuration (401/403/404/405) or ask to come back (408/409/429): never the user's own.
NOT_PERMANENT = frozenset({401, 403, 404, 405, 408, 409, 429})
OVERLOAD_STATUSES = frozenset({429, 503, 504})  # with a timeout or no connection: the backend is overrun
COOLDOWN_STATUSES = frozenset({429, 503})  # with Retry-After: the backend asks everyone to wait, so the fleet does
RETRY_AFTER_DIGITS = 10  # over three centuries of seconds


def kind_of(status: int) -> Kind | None:
    """What an HTTP status says about a call, the one rule for the sync call, the health check and `check`:
    None for a transient status worth retrying."""
    if 200 <= status < 300:
        return Kind.SYNCED
    if status in TRANSIENT:
        return None
    if status in (404, 405) or 300 <= status < 400:
        return Kind.ENDPOINT
    if status in (401, 403):
        return Kind.AUTH
    return Kind.SERVER_ERROR if status >= 500 else Kind.USER_ERROR


def given_up(status: int | None) -> Kind:
    """What a transient failure (``status`` None: no complete answer) is once its retries, or the run's time, are
    spent: a failure all the same, of the backend or of the way to it."""
    return Kind.TRANSPORT if status is None else Kind.SERVER_ERROR


def overloaded(kind: Kind | None, status: int | None) -> bool:
    """Whether an attempt's answer says the backend is overrun: it asked us to slow down, or gave no answer in time."""
    return kind is None and (status is None or status in OVERLOAD_STATUSES)


def cooldown(status: int | None, retry_after: float | None) -> float | None:
    """The wait an answer asks of every caller, not only of this one: the Retry-After of a COOLDOWN_STATUSES answer;
    None when it asks nothing of the others."""
    return retry_after if status in COOLDOWN_STATUSES else None


def is_permanent(status: int | None, listed: tuple[int, ...]) -> bool:
    """Whether an answer says this user's sync fails however often it is retried: one of the ``listed``
    statuses (sync.quarantine_statuses), or by default any 4xx that is not in NOT_PERMANENT."""
    if status is None:
        return False
    return status in listed if listed else 400 <= status < 500 and status not in NOT_PERMANENT


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number (ASCII digits, as HTTP writes them), or an HTTP date; None when it is neither
    or is a date no clock can hold. More digits than a wait of decades has are a wait longer than any cap."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= RETRY_AFTER_DIGITS else math.inf
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):  # not a date, or one out of datetime's range (year 99999999999)
        return None
