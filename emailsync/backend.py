"""The backend client: one POST per user, bounded retries, and a pool of threads each with its own session.

What the answer means is decided here, once: 2xx synced; 429/502/503/504 and transport errors are transient and
retried (exponential backoff, full jitter, Retry-After honoured); 404/405/3xx say the endpoint is wrong and 401/403
that the token is (the cycle decides whether that is everyone's problem); any other status is this user's failure.
Redirects are never followed, so the Authorization header only ever goes to the configured backend.
"""

from __future__ import annotations

import email.utils
import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from emailsync import __version__
from emailsync.claims import Claim
from emailsync.config import BackendConfig
from emailsync.errors import BackendUnavailable, ConfigError

TRANSIENT = frozenset({429, 502, 503, 504})
MAX_BODY = 64 * 1024  # we only need a count from the body; a 10 MB answer is cut here
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6b0e1e53-8a0b-4c1a-9a43-53b0f2a54e0c")


class Kind(Enum):
    SYNCED = "synced"
    USER_ERROR = "user_error"  # other 4xx: this user's problem
    SERVER_ERROR = "server_error"  # 5xx, or 429/502-504 after the retries
    TRANSPORT = "transport"  # connection refused, reset, timeout, TLS, after the retries
    ENDPOINT = "endpoint"  # 404, 405, 3xx: probably a wrong backend.sync_path
    AUTH = "auth"  # 401, 403: probably a wrong token
    NOT_STARTED = "not_started"  # the run was stopping before this call began

    @property
    def breaks_circuit(self) -> bool:
        return self in (Kind.SERVER_ERROR, Kind.TRANSPORT)


@dataclass(frozen=True)
class Attempt:
    """One POST: ``kind`` is None when it failed transiently and may be retried."""

    kind: Kind | None
    status: int | None
    error: str | None = None
    emails_synced: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    kind: Kind
    status: int | None
    attempts: int
    duration_ms: int
    error: str | None = None
    emails_synced: int | None = None


def idempotency_key(run_id: str, claim: Claim) -> str:
    """Unique per (run, user), and the same on every retry of that call, so a retried POST is safe."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{run_id}/{claim.key}"))


def new_session(config: BackendConfig) -> requests.Session:
    """A session holding one kept-alive connection, ignoring the environment's proxies and .netrc (which
    could replace our Authorization header)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = config.ca_file or (SYSTEM_CA_BUNDLE if Path(SYSTEM_CA_BUNDLE).exists() else True)
    session.headers["User-Agent"] = f"email-sync/{__version__}"
    if config.token:
        session.headers["Authorization"] = f"Bearer {config.token}"
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
    session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
    return session


def check_health(config: BackendConfig) -> None:
    """Preflight: the backend answers its health path. Down → 75; a path it does not know → 78."""
    with new_session(config) as session:
        try:
            response = session.get(
                config.health_url, timeout=(config.connect_timeout, config.read_timeout), allow_redirects=False
            )
            response.close()
        except requests.RequestException as error:
            raise BackendUnavailable(f"backend unreachable at {config.health_url}: {_describe(error)}") from None
    if response.status_code in (404, 405) or 300 <= response.status_code < 400:
        raise ConfigError(
            f"backend health check {config.health_url} answered {response.status_code}: "
            "check backend.base_url and backend.health_path"
        )
    if response.status_code in (401, 403):
        raise ConfigError(
            f"backend health check {config.health_url} answered {response.status_code}: "
            "check backend.token_file (or the backend-token credential)"
        )
    if not 200 <= response.status_code < 300:
        raise BackendUnavailable(f"backend health check {config.health_url} answered {response.status_code}")


class RateLimiter:
    """At most ``rate`` starts per second across all threads (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.gap:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.gap
        stop.wait(start - now)


class Client:
    """Calls the sync endpoint for one claim, with retries. Safe to share; each thread passes its own session."""

    def __init__(
        self,
        config: BackendConfig,
        max_emails: int,
        run_id: str,
        stop: threading.Event,
        on_attempt: Callable[[], None],
    ) -> None:
        self.config = config
        self.max_emails = max_emails
        self.run_id = run_id
        self.stop = stop
        self.on_attempt = on_attempt
        self.rate = RateLimiter(config.max_rate)

    def sync(self, session: requests.Session, claim: Claim) -> Outcome:
        started = time.monotonic()
        number = 0
        while True:
            number += 1
            self.rate.wait(self.stop)
            attempt = self._attempt(session, claim)
            self.on_attempt()
            delay = self._retry_delay(number, attempt.retry_after) if attempt.kind is None else None
            if delay is None or self.stop.wait(delay):
                break
        # A transient failure that ran out of retries (or of time, when stopping) is a failure all the same.
        kind = attempt.kind or (Kind.TRANSPORT if attempt.status is None else Kind.SERVER_ERROR)
        duration_ms = int((time.monotonic() - started) * 1000)
        return Outcome(claim, kind, attempt.status, number, duration_ms, attempt.error, attempt.emails_synced)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when we should give up on this user for this run."""
        if attempt > self.config.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.config.retry_backoff_max else None
        return random.uniform(0, min(self.config.retry_backoff_max, self.config.retry_backoff * 2 ** (attempt - 1)))

    def _attempt(self, session: requests.Session, claim: Claim) -> Attempt:
        config = self.config
        try:
            response = session.post(
                config.sync_url,
                json={"user_id": claim.user_id, "email": claim.email, "max_emails": self.max_emails},
                headers={"Idempotency-Key": idempotency_key(self.run_id, claim)},
                timeout=(config.connect_timeout, config.read_timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.RequestException as failure:
            return Attempt(None, None, _describe(failure))
        try:
            body = response.raw.read(MAX_BODY + 1, decode_content=True)
        except (requests.RequestException, OSError) as failure:
            return Attempt(None, response.status_code, f"reading the answer: {_describe(failure)}")
        finally:
            response.close()
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(Kind.SYNCED, status, emails_synced=_emails_synced(body))
        error = f"HTTP {status}"  # the URL is the same for everyone: cycle_started logs it
        if 300 <= status < 400:
            error += f" redirecting to {response.headers.get('Location', '?')} (not followed)"
        elif body:
            error += f": {body[:300].decode('utf-8', 'replace')}"
        if status in TRANSIENT:
            return Attempt(None, status, error, retry_after=_retry_after(response.headers.get("Retry-After")))
        if status in (404, 405) or 300 <= status < 400:
            return Attempt(Kind.ENDPOINT, status, error)
        if status in (401, 403):
            return Attempt(Kind.AUTH, status, error)
        return Attempt(Kind.SERVER_ERROR if status >= 500 else Kind.USER_ERROR, status, error)


def _emails_synced(body: bytes) -> int | None:
    """The count from a JSON body like {"emails_synced": 12}; any other body is fine and yields None."""
    if len(body) > MAX_BODY:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    count = data.get("emails_synced") if isinstance(data, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(error: BaseException) -> str:
    """A transport error in one line, without the nested repr chains urllib3 produces."""
    reason: BaseException = error
    while reason.__context__ is not None and not str(reason):
        reason = reason.__context__
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return f"{type(error).__name__}: {text}"


class CallPool:
    """``concurrency`` daemon threads, each with its own session, turning claims into outcomes.

    Daemon threads, so a call that is still hanging when the run must end cannot keep the process alive: its
    user's lease simply expires.
    """

    def __init__(self, client: Client, concurrency: int, halt: threading.Event) -> None:
        self.client = client
        self.halt = halt
        self.jobs: queue.SimpleQueue[Claim] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[Outcome | Exception] = queue.SimpleQueue()
        for number in range(concurrency):
            threading.Thread(target=self._work, name=f"call-{number}", daemon=True).start()

    def submit(self, claim: Claim) -> None:
        self.jobs.put(claim)

    def next_outcome(self, timeout: float) -> Outcome | None:
        """The next finished call; a bug in a thread is raised here, in the main thread, rather than lost."""
        try:
            outcome = self.outcomes.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def take_unstarted(self) -> list[Claim]:
        """The claims no thread has picked up yet, taken back so they can be released."""
        taken = []
        while True:
            try:
                taken.append(self.jobs.get_nowait())
            except queue.Empty:
                return taken

    def _work(self) -> None:
        session = new_session(self.client.config)
        while True:
            claim = self.jobs.get()
            if self.halt.is_set():
                self.outcomes.put(Outcome(claim, Kind.NOT_STARTED, None, 0, 0))
                continue
            try:
                self.outcomes.put(self.client.sync(session, claim))
            except Exception as bug:  # noqa: BLE001 -- handed to the main thread, which raises it
                self.outcomes.put(bug)
