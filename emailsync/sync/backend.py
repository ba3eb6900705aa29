"""The backend client: one POST per user, bounded retries, and a pool of threads each with its own session.

What an answer means is emailsync.sync.answers's to say; here a transient one is retried (exponential backoff, full
jitter, Retry-After honoured), one that asks everyone to wait holds the fleet's calls, and the rest end the user's
call (the cycle decides whether a wrong endpoint or token is everyone's problem). Redirects are never followed, so
the Authorization header only ever goes to the configured backend.

Every request carries a W3C ``traceparent``: the run id (a uuid4) as its trace id and a fresh span id per attempt,
so the backend's traces of a run join that run's log lines (whose run_id is the same 32 hex digits, dashed).

Every request has a deadline, backend.call_timeout from its start, that bounds every wait for a byte of it (see
emailsync.sync.http1): a timeout per wait alone would let an answer trickling in a byte at a time hold a worker (and a
run started by hand) for hours. A request cut off at its deadline is a transport failure, retried like one, each
retry with a deadline of its own.
"""

from __future__ import annotations

import functools
import json
import math
import queue
import random
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from emailsync import __version__
from emailsync.config.settings import BackendConfig
from emailsync.errors import BackendUnavailable, ConfigError, EmailSyncError
from emailsync.model import Claim, Kind, Outcome
from emailsync.sync import answers
from emailsync.sync.budget import Pace
from emailsync.sync.http1 import BadAnswer, Connection
from emailsync.sync.limiter import Admission

MAX_BODY = 64 * 1024  # we only need a count from the body; a 10 MB answer is cut here
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# A request without a complete answer: no connection, a timeout, TLS, a broken or malformed answer.
TRANSPORT_ERRORS = (BadAnswer, OSError)
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6b0e1e53-8a0b-4c1a-9a43-53b0f2a54e0c")


@dataclass(frozen=True)
class Attempt:
    """One POST: ``kind`` is None when it failed transiently and may be retried."""

    kind: Kind | None
    status: int | None
    error: str | None = None
    emails_synced: int | None = None
    retry_after: float | None = None


def idempotency_key(claim: Claim, payload: str) -> str:
    """One key per piece of work: this request (its JSON ``payload``) for the state its claim saw (last_sync,
    failures, results recorded), whichever run sends it. A retry within the run, or a new call after a crash forgot
    the answer, carries the same key, so a backend that honours the header syncs once; a new window, a recorded
    result or a changed request (another email, max_emails) makes another. A name-based UUID: nothing in clear."""
    state = json.dumps([payload, claim.last_sync, claim.failures, claim.results])
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, state))


class CallFailed(Exception):
    """The request got no complete answer: no connection, a timeout, a broken TLS or answer."""

    def __init__(self, status: int | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes  # at most MAX_BODY + 1 bytes: one more than we read tells that the answer was cut


class Session:
    """One kept-alive connection to the backend, for one thread at a time.

    HTTP/1.1 of our own (emailsync.sync.http1) rather than urllib3 over http.client: a run at latency 0 is bound by the
    CPU of its calls, and that stack spends more of it on each (docs/speed.md). No proxies from the environment, no
    .netrc, no redirects, no retries of its own: the Authorization header only ever goes to the configured backend,
    and retries are ours.
    """

    def __init__(self, config: BackendConfig, run_id: str) -> None:
        url = urlsplit(config.base_url)
        self.fixed_headers = f"Host: {url.netloc}\r\nUser-Agent: email-sync/{__version__}\r\nAccept: */*\r\n" + (
            f"Authorization: Bearer {config.token}\r\n" if config.token else ""
        )
        self.trace_id = uuid.UUID(run_id).hex
        self.connect_timeout = config.connect_timeout
        self.read_timeout = config.read_timeout
        self.call_timeout = config.call_timeout
        self.calls = 0  # requests sent, answered or not
        if url.scheme == "https":
            ca_file = config.ca_file or (SYSTEM_CA_BUNDLE if Path(SYSTEM_CA_BUNDLE).exists() else None)
            tls = tls_context(ca_file)
        else:
            tls = None
        self.connection = Connection(
            url.hostname or "",
            url.port or (443 if tls is not None else 80),
            tls,
            self.connect_timeout,
            self.read_timeout,
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.connection.close()

    def call(self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """One request and the start of its answer, by its deadline; CallFailed when there is no complete answer."""
        deadline = time.monotonic() + self.call_timeout
        self.calls += 1
        request = self.request(method, url, body, headers or {})
        connection = self.connection
        try:
            connection.send(request, deadline)
        except TRANSPORT_ERRORS as failure:
            timed_out = f"not connected and sent within backend.connect_timeout ({self.connect_timeout:g}s)"
            raise self._failed(None, deadline, _describe(failure, timed_out)) from None
        try:
            head = connection.read_head()
        except TRANSPORT_ERRORS as failure:
            raise self._failed(None, deadline, _describe(failure, self._read_timed_out())) from None
        try:
            answer = connection.read_body(head, MAX_BODY + 1)
        except TRANSPORT_ERRORS as failure:
            description = f"reading the answer: {_describe(failure, self._read_timed_out())}"
            raise self._failed(head.status, deadline, description) from None
        return Reply(head.status, head.headers, answer)

    def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """The request as it goes on the wire: the head, then the body."""
        head = [f"{method} {request_target(url)} HTTP/1.1\r\n{self.fixed_headers}traceparent: {self.traceparent()}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None:
            head.append(f"Content-Length: {len(body)}\r\n")
        head.append("\r\n")
        return "".join(head).encode("latin-1") + (body or b"")

    def traceparent(self) -> str:
        """This attempt's W3C trace context: the run's trace, a span of its own (never all zeros), sampled."""
        return f"00-{self.trace_id}-{random.getrandbits(64) or 1:016x}-01"

    def _read_timed_out(self) -> str:
        return f"read timed out: no answer within backend.read_timeout ({self.read_timeout:g}s)"

    def _failed(self, status: int | None, deadline: float, description: str) -> CallFailed:
        """A call without a complete answer: its connection cannot carry another call; past the deadline, whatever
        the failure, it was cut off."""
        self.connection.close()
        if time.monotonic() < deadline:
            return CallFailed(status, description)
        late = f"HTTP {status}, then " if status else ""
        return CallFailed(None, f"{late}no complete answer within backend.call_timeout ({self.call_timeout:g}s)")


@functools.cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The backend's certificate checked against ``ca_file`` (None: the system's CAs) and its name; one context for
    every session of a run, so the CA bundle is read once."""
    return ssl.create_default_context(cafile=ca_file)


@functools.cache
def request_target(url: str) -> str:
    """The path and query of a URL on the configured backend: what goes on the request line."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def check_health(config: BackendConfig, run_id: str) -> None:
    """Preflight: the backend answers its health path. Down → 75; a path it does not know → 78."""
    with Session(config, run_id) as session:
        try:
            status = session.call("GET", config.health_url).status
        except CallFailed as failure:
            raise BackendUnavailable(f"backend unreachable at {config.health_url}: {failure.description}") from None
    kind = answers.kind_of(status)
    if kind is Kind.ENDPOINT:
        raise ConfigError(
            f"backend health check {config.health_url} answered {status}: "
            "check backend.base_url and backend.health_path"
        )
    if kind is Kind.AUTH:
        raise ConfigError(
            f"backend health check {config.health_url} answered {status}: "
            "check backend.token_file (or the backend-token credential)"
        )
    if kind is not Kind.SYNCED:
        raise BackendUnavailable(f"backend health check {config.health_url} answered {status}")


class Client:
    """Calls the sync endpoint for one claim, with retries. Safe to share; each thread passes its own session."""

    def __init__(
        self,
        config: BackendConfig,
        max_emails: int,
        run_id: str,
        stop: threading.Event,
        on_attempt: Callable[[], None],
        pace: Pace,
    ) -> None:
        self.config = config
        self.max_emails = max_emails
        self.run_id = run_id
        self.stop = stop
        self.on_attempt = on_attempt
        self.pace = pace

    def sync(self, session: Session, claim: Claim, gate: Admission, start_by: float = math.inf) -> Outcome:
        """The user's call with its retries, each attempt let in by ``gate``; NOT_STARTED when the run stops before
        the gate lets the first one in, or when it is let in after ``start_by`` (monotonic): a call started later
        could outlast the user's lease, and another run may then call the same user."""
        started = time.monotonic()
        number = 0
        attempt: Attempt | None = None
        while gate.enter(self.stop):
            self.pace.wait(self.stop)
            if attempt is None and time.monotonic() > start_by:
                gate.withdraw()
                break
            number += 1
            sent = time.monotonic()
            try:
                attempt = self._attempt(session, claim)
            except BaseException:
                gate.withdraw()  # its room goes to the next call; a failure of ours says nothing of the backend
                raise
            overloaded = answers.overloaded(attempt.kind, attempt.status)
            gate.leave(time.monotonic() - sent if attempt.kind is Kind.SYNCED else None, overloaded)
            self.on_attempt()
            cooldown = answers.cooldown(attempt.status, attempt.retry_after)
            if cooldown is not None:
                self.pace.cool_down(cooldown, attempt.status)
            delay = self._retry_delay(number, attempt.retry_after) if attempt.kind is None else None
            if delay is None or self.stop.wait(delay):
                break
        if attempt is None:
            return Outcome(claim, Kind.NOT_STARTED, None, 0, 0)
        kind = attempt.kind or answers.given_up(attempt.status)
        duration_ms = int((time.monotonic() - started) * 1000)
        return Outcome(claim, kind, attempt.status, number, duration_ms, attempt.error, attempt.emails_synced)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when we should give up on this user for this run."""
        if attempt > self.config.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.config.retry_backoff_max else None
        return random.uniform(0, min(self.config.retry_backoff_max, self.config.retry_backoff * 2 ** (attempt - 1)))

    def _attempt(self, session: Session, claim: Claim) -> Attempt:
        payload = json.dumps({"user_id": claim.user_id, "email": claim.email, "max_emails": self.max_emails})
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(claim, payload)}
        try:
            reply = session.call("POST", self.config.sync_url, payload.encode(), headers)
        except CallFailed as failure:
            return Attempt(None, failure.status, failure.description)
        status, body = reply.status, reply.body
        kind = answers.kind_of(status)
        if kind is Kind.SYNCED:
            return Attempt(kind, status, emails_synced=_emails_synced(body))
        error = f"HTTP {status}"  # the URL is the same for everyone: cycle_started logs it
        if 300 <= status < 400:
            error += f" redirecting to {reply.headers.get('location', '?')} (not followed)"
        elif body:
            error += f": {body[:300].decode('utf-8', 'replace')}"
        if kind is None:
            return Attempt(None, status, error, retry_after=answers.retry_after(reply.headers.get("retry-after")))
        return Attempt(kind, status, error)


def _emails_synced(body: bytes) -> int | None:
    """The count from a JSON body like {"emails_synced": 12}; any other body is fine and yields None."""
    if len(body) > MAX_BODY:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes, e.g. [[[[...
        return None
    count = data.get("emails_synced") if isinstance(data, dict) else None
    is_count = isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 2**63  # a number, not a wall
    return count if is_count else None


def _describe(failure: BaseException, timed_out: str) -> str:
    """A transport failure in one line; a timeout is said as ``timed_out``, which names the setting that set it."""
    if isinstance(failure, TimeoutError):
        return timed_out
    if isinstance(failure, BadAnswer):
        return str(failure)
    reason: BaseException = failure
    while reason.__context__ is not None and not str(reason):
        reason = reason.__context__
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return f"{type(failure).__name__}: {text}"


class CallPool:
    """Up to the gate's ``threads`` daemon threads, each with its own session, turning claims into outcomes.

    A thread is started with each claim submitted until there are as many as the gate allows: a run that finds
    nobody due starts none, and one that finds three starts three. Daemon threads, so a call that is still hanging
    when the run must end cannot keep the process alive: its user's lease simply expires.

    The pool is the calls' boundary: an exception that is not one of ours with an exit code (a bug, whatever the
    answer that set it off) fails that one user's call and the run goes on; each such bug's traceback is logged once.
    """

    def __init__(self, client: Client, gate: Admission, halt: threading.Event) -> None:
        self.client = client
        self.gate = gate
        self.halt = halt
        self.jobs: queue.SimpleQueue[tuple[Claim, float]] = queue.SimpleQueue()  # with the time to start it by
        self.outcomes: queue.SimpleQueue[Outcome | EmailSyncError] = queue.SimpleQueue()
        self.threads = 0
        self.bugs: set[tuple[str, str, int]] = set()  # (type, file, line) of the bugs whose traceback is logged
        self.bugs_lock = threading.Lock()

    def submit(self, claim: Claim, start_by: float) -> None:
        """Call this user unless the call cannot start by ``start_by`` (monotonic; see Client.sync)."""
        self.jobs.put((claim, start_by))
        if self.threads < self.gate.threads:
            threading.Thread(target=self._work, name=f"call-{self.threads}", daemon=True).start()
            self.threads += 1

    def next_outcome(self, timeout: float) -> Outcome | None:
        """The next finished call; an expected failure in a thread (e.g. the database of the fleet's budget) is
        raised here, in the main thread, with its exit code."""
        try:
            outcome = self.outcomes.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(outcome, EmailSyncError):
            raise outcome
        return outcome

    def take_unstarted(self) -> list[Claim]:
        """The claims no thread has picked up yet, taken back so they can be released."""
        taken = []
        while True:
            try:
                taken.append(self.jobs.get_nowait()[0])
            except queue.Empty:
                return taken

    def _work(self) -> None:
        session = Session(self.client.config, self.client.run_id)
        while True:
            claim, start_by = self.jobs.get()
            if self.halt.is_set():
                self.outcomes.put(Outcome(claim, Kind.NOT_STARTED, None, 0, 0))
                continue
            calls, started = session.calls, time.monotonic()
            try:
                self.outcomes.put(self.client.sync(session, claim, self.gate, start_by))
            except EmailSyncError as failure:
                self.outcomes.put(failure)
            except Exception as bug:  # noqa: BLE001 -- the boundary: this user's failed call, never the run's end
                session.connection.close()  # what it was reading is no other call's answer
                self.outcomes.put(self._failed_by(bug, claim, session.calls - calls, started))

    def _failed_by(self, bug: Exception, claim: Claim, attempts: int, started: float) -> Outcome:
        """The outcome of a call that ``bug`` cut short, carrying the bug for its traceback the first time it is seen
        in this run."""
        frame = traceback.extract_tb(bug.__traceback__)[-1]  # raised in this thread: it has a frame
        where = (type(bug).__name__, frame.filename, frame.lineno or 0)
        with self.bugs_lock:
            first = where not in self.bugs
            self.bugs.add(where)
        text = str(bug).splitlines()[0][:300] if str(bug) else ""
        error = f"internal error: {type(bug).__name__}{f': {text}' if text else ''}"
        duration_ms = int((time.monotonic() - started) * 1000)
        return Outcome(claim, Kind.INTERNAL, None, attempts, duration_ms, error, bug=bug if first else None)
