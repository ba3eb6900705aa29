"""One sync cycle: check, claim due users, call the backend for each, record results, report.

The main thread owns the database (claims, result batches, the run row) and the notifications to systemd; the call
pool's threads talk HTTP, and touch the database only to lease the fleet's call budget when backend.max_rate is set
(emailsync/sync/budget.py, one thread at a time). The cycle ends when no due user is left or ``max_users_per_run`` were
claimed; early when asked to stop (SIGTERM), when the endpoint or token is wrong for everyone (78), or when the
backend keeps failing (75). Ending early always means: start no new call, give in-flight calls ``shutdown_grace``
to finish and record them, release every lease we did not use. An operator's `pause` or `drain`
(emailsync/store/control.py) ends it gently: it claims nobody more and lets every call in flight finish; a pause also
gives back the claims not yet started.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Engine

from emailsync import __version__
from emailsync.config.settings import Config
from emailsync.errors import (
    CircuitOpen,
    ConfigError,
    DatabaseUnavailable,
    EmailSyncError,
    EndpointError,
    TemporaryError,
)
from emailsync.model import Claim, Kind, Outcome, Result, RunCounts
from emailsync.redaction import redact_and_truncate
from emailsync.report import alert, metrics
from emailsync.report.monitor import Pinger
from emailsync.report.runlog import FAILURES_SHOWN, RunLog
from emailsync.store import backlog, control, db, runs, schema
from emailsync.store.backlog import Backlog
from emailsync.store.control import FleetMode, FleetWatch
from emailsync.store.leases import PAGE, DuePages, Leases
from emailsync.sync import answers, backend, budget, limiter
from emailsync.sync.backend import CallPool, Client
from emailsync.sync.limiter import Admission
from emailsync.systemd.notify import Notifier

log = structlog.get_logger()

UNWRITTEN_FOR = 0.2  # seconds: the longest the result of an answered call waits before its batch is written
UNWRITTEN_AT_MOST = 64  # results waiting that make a batch due at once (sync.batch_size if that is fewer)
POLL = 0.2  # seconds: how long the main loop waits for an outcome before looking at the clock again
AHEAD = 1.0  # seconds of the calls' pace that claims run ahead of them, at most (see Cycle._claim_more)


@dataclass
class RunReport:
    run_id: str
    counts: RunCounts
    outcome: str
    duration_ms: int
    concurrency_limit: int  # the last limit of concurrency = "auto"; a fixed concurrency's setting


def check_watchdog_fits(config: Config, notifier: Notifier) -> None:
    """A call that times out must still end before systemd's watchdog gives up on us."""
    watchdog = notifier.watchdog
    if watchdog and not watchdog.allows(config.backend.longest_silence):
        raise ConfigError(
            f"{config.source}: backend.call_timeout + retry_backoff_max "
            f"({config.backend.longest_silence:g}s) must be under half of the unit's WatchdogSec "
            f"({watchdog.interval:g}s): lower them or raise WatchdogSec"
        )


def run(config: Config, notifier: Notifier, stop: threading.Event) -> RunReport:
    """One whole cycle. Raises an EmailSyncError for the outcomes that need an exit code other than 0."""
    run_id = str(uuid.uuid4())
    structlog.contextvars.bind_contextvars(run_id=run_id)
    started = time.monotonic()
    counts = RunCounts()
    outcome, error, recorded = "crashed", None, False
    gate = limiter.admission(config.backend)
    pings = Pinger(config.monitor, run_id)
    engine = db.connect(config.database)
    metrics.run_started(config.metrics.textfile)
    try:
        ready = schema.ready_for_run(engine, config.users, config.database.migrate)
        if ready.migrated:
            log.info("schema_migrated", from_version=ready.found, to_version=ready.version)
        runs.start(engine, run_id, config.sync.host_id, os.getpid(), __version__)
        recorded = True
        pings.start()
        leases = Leases(engine, config.users, config.sync, run_id)
        fleet = FleetWatch(engine)
        counts.due = leases.count_due()
        mode = fleet.current()
        if ready.newer:  # the upgraded hosts do the work; a fleet that nobody upgrades breaks the freshness promise
            outcome = _stand_aside(ready.version)
        elif not mode.claims:  # the backend may be down for the very maintenance the pause is for
            outcome = _halted(mode)
        else:
            backend.check_health(config.backend, run_id)
            log.info("cycle_started", host=config.sync.host_id, due=counts.due, sync_url=config.backend.sync_url)
            cycle = Cycle(config, leases, fleet, notifier, stop, counts)
            cycle.sync_due_users(gate)
            outcome = "interrupted" if stop.is_set() else cycle.halted or "ok"
    except EmailSyncError as failure:
        outcome, error = failure.event, failure
        raise
    finally:
        report = RunReport(run_id, counts, outcome, int((time.monotonic() - started) * 1000), gate.limit)
        _report(report, error, engine if recorded else None, config, pings)
        engine.dispose()
    return report


def _stand_aside(version: int) -> str:
    """The outcome of a run whose release is older than the database's schema: it claims nobody, and says so once.
    Not a failure (exit 0, no OnFailure= alert): the hosts already upgraded do the work."""
    log.warning("awaiting_upgrade", release=__version__, schema_known=schema.SCHEMA_VERSION, schema_found=version)
    return runs.STOOD_ASIDE


def _halted(mode: FleetMode) -> str:
    """The outcome of a run that the fleet's mode stopped (healthy, as a run stopped by systemd is), logged when the
    run heeds it."""
    log.info("fleet_halted", mode=mode.mode, changed_by=mode.changed_by, reason=mode.reason)
    return "paused" if mode.mode == control.PAUSED else "drained"


def _report(
    report: RunReport, error: EmailSyncError | None, engine: Engine | None, config: Config, pings: Pinger
) -> None:
    """What every run leaves behind, however it ended: the log line, its row (``engine``: where the run's row
    was started), its part of the failure streak (emailsync/report/alert.py), the metrics, the end ping (a failure
    when the database could not tell whether the freshness promise holds, e.g. when it was unreachable)."""
    counts = report.counts
    log.info(
        "cycle_finished",
        outcome=report.outcome,
        due=counts.due,
        synced=counts.synced,
        failed=counts.failed,
        skipped=counts.skipped,
        duration_ms=report.duration_ms,
        concurrency_limit=report.concurrency_limit,
    )
    waiting = None
    if engine is not None and not isinstance(error, DatabaseUnavailable):  # the database is there to write to
        runs.finish(engine, report.run_id, counts, report.outcome, str(error) if error else None)
        wanted = config.metrics.textfile or pings.on or alert.wants_freshness(config, error, os.environ)
        if wanted:
            with db.transaction(engine) as connection:
                waiting = backlog.read(connection, config)
    stale = waiting is not None and not waiting.freshness.holds
    alert.run_ended(config, report.run_id, report.outcome, error, stale, os.environ)
    metrics.run_finished(
        config, report.outcome, counts, report.duration_ms / 1000, report.concurrency_limit, waiting, engine
    )
    if pings.on:
        _ping_end(report, waiting, config, pings)


def _ping_end(report: RunReport, backlog: Backlog | None, config: Config, pings: Pinger) -> None:
    """Success only when the run ended healthy and every user is fresh: a monitor cares about stale mail, not
    about runs; without a backlog (no database) nobody can say the promise holds."""
    counts, fresh = report.counts, backlog.freshness if backlog else None
    facts = {
        "outcome": report.outcome,
        "host": config.sync.host_id,
        "due": counts.due,
        "synced": counts.synced,
        "failed": counts.failed,
        "skipped": counts.skipped,
        "duration_ms": report.duration_ms,
        "oldest_due_age_s": backlog.oldest_age_s if backlog else None,
        "oldest_sync_age_s": fresh.oldest_sync_age_s if fresh else None,
        "users_over_max_staleness": fresh.over if fresh else None,
        "freshness_ok": fresh.holds if fresh else False,
    }
    pings.finish(report.outcome in runs.HEALTHY_OUTCOMES and bool(facts["freshness_ok"]), facts)


def result_of(outcome: Outcome, permanent_statuses: tuple[int, ...]) -> Result:
    """The result to record for a finished call."""
    ok = outcome.kind is Kind.SYNCED
    permanent = not ok and answers.is_permanent(outcome.status, permanent_statuses)
    return Result(outcome.claim, ok, outcome.duration_ms, outcome.error, permanent)


@dataclass
class Unwritten:
    """What the main thread holds for its next write: results of answered calls, and leases of users not called.

    The results are all a crash (kill -9, the OOM killer, the watchdog, a power cut) forgets: their users are synced
    again once their leases expire, with the same Idempotency-Key. So a batch is due once its oldest entry has
    waited UNWRITTEN_FOR, or ``at_most`` results wait, whichever comes first: one transaction for many users keeps
    the database's cost per user low, and the bound keeps what a crash forgets small.
    """

    at_most: int
    results: list[Result] = field(default_factory=list)
    unused: list[Claim] = field(default_factory=list)
    since: float = math.inf  # monotonic: when the oldest entry came

    def add(self, entry: Result | Claim, now: float) -> None:
        if self.since == math.inf:
            self.since = now
        if isinstance(entry, Result):
            self.results.append(entry)
        else:
            self.unused.append(entry)

    def due_in(self, now: float) -> float:
        """Seconds until the batch is due: 0 when it is, inf while nothing waits."""
        return 0.0 if len(self.results) >= self.at_most else max(0.0, self.since + UNWRITTEN_FOR - now)

    def take(self) -> tuple[list[Result], list[Claim]]:
        taken = self.results, self.unused
        self.results, self.unused, self.since = [], [], math.inf
        return taken


@dataclass
class Verdict:
    """Whether the first answers of the cycle say the endpoint or the token is wrong for everyone.

    Until something other than 404/405/3xx/401/403 has been seen, such answers are held back rather than
    recorded as the users' failures: if the first ``needed`` answers are all of that kind, it is the
    configuration's fault, and nobody's backoff should grow for it.
    """

    needed: int
    sync_url: str
    suspects: list[Outcome] = field(default_factory=list)
    cleared: bool = False

    def observe(self, outcome: Outcome) -> list[Outcome]:
        """The outcomes that can now be recorded."""
        if self.cleared:
            return [outcome]
        if outcome.kind.blames_configuration:
            self.suspects.append(outcome)
            if len(self.suspects) >= self.needed:
                raise self.error()
            return []
        if outcome.kind is Kind.NOT_STARTED:
            return [outcome]
        self.cleared = True
        held, self.suspects = self.suspects, []
        return [*held, outcome]

    def error(self) -> EndpointError:
        statuses = "/".join(sorted({str(o.status) for o in self.suspects}))
        answered = f"POST {self.sync_url} answered {statuses} for the first {len(self.suspects)} users"
        if all(o.kind is Kind.AUTH for o in self.suspects):
            return EndpointError(
                f"{answered}: the backend refused our token; check backend.token_file (or the backend-token credential)"
            )
        redirect = next((o.error for o in self.suspects if o.error and "redirecting" in o.error), None)
        return EndpointError(
            f"{answered}{f' ({redirect})' if redirect else ''}: backend.sync_path (or backend.base_url) is wrong"
        )


class Cycle:
    def __init__(
        self,
        config: Config,
        leases: Leases,
        fleet: FleetWatch,
        notifier: Notifier,
        stop: threading.Event,
        counts: RunCounts,
    ) -> None:
        self.config = config
        self.leases = leases
        self.fleet = fleet
        self.halted: str | None = None  # the outcome once a pause or drain ended this run's claiming
        self.quarantined: list[Result] = []
        self.notifier = notifier
        self.stop = stop
        self.counts = counts
        self.attempts = 0  # calls finished, successful or not: the progress the watchdog hears about
        self.attempts_lock = threading.Lock()
        self.in_flight: dict[str, Claim] = {}
        self.unwritten = Unwritten(min(UNWRITTEN_AT_MOST, config.sync.batch_size))
        self.claimed = 0
        self.began = time.monotonic()
        self.runlog = RunLog(counts, self.began)
        self.due = DuePages(leases, min(PAGE, config.sync.max_users_per_run))
        self.failing_in_a_row = 0
        self.verdict = Verdict(config.sync.endpoint_probe, config.backend.sync_url)
        # sync.lease >= 2 x the longest call (config), so a claim has at least one longest call to start in.
        self.start_within = config.sync.lease - config.backend.longest_call
        pace = budget.for_backend(leases.engine, config.backend, config.sync.host_id)
        self.client = Client(config.backend, config.sync.max_emails, leases.owner, stop, self._attempt_done, pace)

    def _attempt_done(self) -> None:
        with self.attempts_lock:
            self.attempts += 1

    def sync_due_users(self, gate: Admission) -> None:
        pool = CallPool(self.client, gate, self.stop)
        try:
            self._call_until_done(pool)
        except (EndpointError, CircuitOpen):
            self.stop.set()
            self._wind_down(pool)
            raise
        finally:
            self.runlog.summarize()
            self.notifier.status(self.status_line())
            if self.quarantined:
                self._alert_quarantined()

    def _call_until_done(self, pool: CallPool) -> None:
        progress_seen = -1
        while self.in_flight or not self._done_claiming():
            if not self._done_claiming():
                self._heed_fleet(pool)
            if not self._done_claiming():
                self._claim_more(pool)
                if not self.in_flight and self._done_claiming():
                    break  # nobody (else) was due: no outcome will come, so do not wait a POLL for one
            self._collect(pool)
            if self.attempts != progress_seen:  # only real progress feeds the watchdog: a hang must starve it
                progress_seen = self.attempts
                self.notifier.progress(self.status_line())
            self.runlog.tick(time.monotonic(), len(self.in_flight))
            if self.stop.is_set():
                self._wind_down(pool)
                return
        if self.verdict.suspects:  # fewer users than the probe needs, and every one of them said 404 (or 401)
            raise self.verdict.error()
        self._flush()

    def _collect(self, pool: CallPool) -> None:
        """Take the outcomes that come within POLL, and write their batch as soon as it is due (Unwritten): the wait
        ends then, and so does the taking, so no result waits on the next ones."""
        outcome = pool.next_outcome(min(POLL, self.unwritten.due_in(time.monotonic())))
        while outcome is not None:
            self._handle(outcome)
            outcome = pool.next_outcome(0) if self.unwritten.due_in(time.monotonic()) else None
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if not self.unwritten.due_in(time.monotonic()):
            self._flush()

    def _done_claiming(self) -> bool:
        return (
            self.due.done
            or self.stop.is_set()
            or self.halted is not None
            or self.claimed >= self.config.sync.max_users_per_run
        )

    def _heed_fleet(self, pool: CallPool) -> None:
        """A pause or drain typed on any host reaches this run within control.READ_EVERY: claim nobody more; on
        a pause also give back the claims not started yet. Calls in flight finish and are recorded either way."""
        mode = self.fleet.current()
        if mode.claims:
            return
        self.halted = _halted(mode)
        if mode.mode == control.PAUSED:
            self._give_back(pool.take_unstarted())

    def _claim_more(self, pool: CallPool) -> None:
        """Keep claims ahead of the calls the gate lets run (under concurrency = "auto", the limit of the moment,
        not the ceiling's threads): one to two times ``ahead`` queued behind them, so that no call thread waits
        for the next claim's round trip. ``ahead`` is as many as the calls, or AHEAD of the run's pace so far if
        that is more, within the gate's cap (Admission.ahead): fast calls get claims of a whole batch, the fewest
        transactions, and slow ones do not hold leases on users that other hosts could be calling. A claim that
        waits in the queue until its lease could end before its call does is not called (Client.sync's
        start_by)."""
        calls, batch = pool.gate.limit, self.config.sync.batch_size
        ahead = min(pool.gate.ahead(batch), max(calls, int(self._pace() * AHEAD)))
        if len(self.in_flight) >= calls + ahead:
            return
        start_by = time.monotonic() + self.start_within  # read before the claim: its leases start later, not earlier
        claims = self.due.claim(
            min(calls + 2 * ahead - len(self.in_flight), batch, self.config.sync.max_users_per_run - self.claimed)
        )
        self.claimed += len(claims)
        for claim in claims:
            self.in_flight[claim.key] = claim
            pool.submit(claim, start_by)

    def _pace(self) -> float:
        """Users finished per second since the cycle began."""
        finished = self.counts.synced + self.counts.failed + self.counts.skipped
        return finished / max(time.monotonic() - self.began, POLL)

    def _handle(self, outcome: Outcome) -> None:
        del self.in_flight[outcome.claim.key]
        for ready in self.verdict.observe(outcome):
            self._account(ready)
        self._check_circuit(outcome)

    def _check_circuit(self, outcome: Outcome) -> None:
        if outcome.kind.breaks_circuit:
            self.failing_in_a_row += 1
            if self.failing_in_a_row >= self.config.sync.circuit_breaker:
                cause = (
                    "a bug in email-sync fails them (its traceback is logged)"
                    if outcome.kind is Kind.INTERNAL
                    else f"the backend at {self.config.backend.base_url} looks down"
                )
                raise CircuitOpen(
                    f"{self.failing_in_a_row} calls in a row failed (last: {outcome.error}); stopping this run, {cause}"
                )
        elif outcome.kind is not Kind.NOT_STARTED:
            self.failing_in_a_row = 0

    def _account(self, outcome: Outcome) -> None:
        """Count and log an outcome, and queue its result for the next batch write."""
        if outcome.kind is Kind.NOT_STARTED:
            self.counts.skipped += 1
            self.unwritten.add(outcome.claim, time.monotonic())
            return
        self.unwritten.add(result_of(outcome, self.config.sync.quarantine_statuses), time.monotonic())
        self.runlog.outcome(outcome)
        if outcome.kind is Kind.SYNCED:
            self.counts.synced += 1
        else:
            self.counts.failed += 1

    def _give_back(self, claims: list[Claim]) -> None:
        """Claims whose call never started: skipped, their leases released with the next flush."""
        for claim in claims:
            self.in_flight.pop(claim.key, None)
            self._account(Outcome(claim, Kind.NOT_STARTED, None, 0, 0))

    def _flush(self) -> None:
        results, unused = self.unwritten.take()
        self.quarantined += self.leases.record(results)
        self.leases.release(unused)

    def _wind_down(self, pool: CallPool) -> None:
        """Start nothing new; wait up to shutdown_grace for calls in flight, recording them; release the rest.

        Calls still running after the grace keep their leases (they may yet reach the backend): the leases
        expire and those users are due again, rather than risk a second run syncing them while the first call
        lands.
        """
        self.notifier.stopping()
        unstarted = pool.take_unstarted() + [s.claim for s in self.verdict.suspects]
        self.verdict.suspects = []
        self._give_back(unstarted)
        deadline = time.monotonic() + self.config.sync.shutdown_grace
        while self.in_flight and time.monotonic() < deadline:
            now = time.monotonic()
            outcome = pool.next_outcome(min(POLL, max(0.0, deadline - now), self.unwritten.due_in(now)))
            if outcome is not None:
                del self.in_flight[outcome.claim.key]
                if outcome.kind.blames_configuration and not self.verdict.cleared:
                    outcome = Outcome(outcome.claim, Kind.NOT_STARTED, None, 0, 0)  # the configuration's fault
                self._account(outcome)
            self._flush_if_due()  # as while calling: a SIGKILL at systemd's stop timeout forgets no more
        self._flush()
        if self.in_flight:
            log.warning("calls_abandoned", count=len(self.in_flight), lease_s=self.config.sync.lease)

    def _alert_quarantined(self) -> None:
        """One alert per run names every user it quarantined; a failing alert is logged, it does not fail the run.
        The log line names the first FAILURES_SHOWN of them, so that it stays one line of the journal. Each reason is
        the one the user was parked with: redacted, since a backend may quote the token in its error."""
        users = [
            {"user_id": r.claim.user_id, "reason": redact_and_truncate(r.error or "failed", db.MAX_ERROR_CHARS)}
            for r in self.quarantined
        ]
        log.warning("users_quarantined", count=len(users), users=users[:FAILURES_SHOWN])
        try:
            alert.deliver(
                self.config,
                {
                    "event": "users_quarantined",
                    "host": self.config.sync.host_id,
                    "run_id": self.leases.owner,
                    "quarantine_after": self.config.sync.quarantine_after,
                    "users": users,
                },
            )
        except TemporaryError as error:
            log.warning("alert_failed", error=str(error))

    def status_line(self) -> str:
        return f"synced {self.counts.synced}/{self.counts.due}, {self.counts.failed} failed"
