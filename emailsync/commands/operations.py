"""What an operator does by hand: sync one user now, clear backoff, list users, pause or drain the fleet, park a
user, see what a run would do. The work behind those commands, so that cli.py only parses and dispatches."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy import Connection, Engine

from emailsync.commands import status
from emailsync.config.settings import Config
from emailsync.errors import Refused, TemporaryError, UsageError
from emailsync.model import Claim, Outcome
from emailsync.report import runlog
from emailsync.store import backlog, control, db, overview, schema
from emailsync.store.leases import Leases
from emailsync.sync import backend, budget
from emailsync.sync.backend import Client
from emailsync.sync.cycle import Verdict, result_of
from emailsync.sync.limiter import Fixed
from emailsync.systemd.timespan import brief


def sync_user(config: Config, who: str) -> Outcome:
    """`email-sync sync USER`: one user now, whatever its interval or backoff, but never under a live lease."""
    run_id = str(uuid.uuid4())
    structlog.contextvars.bind_contextvars(run_id=run_id)
    with _ready(config) as engine:
        leases = Leases(engine, config.users, config.sync, run_id)
        key = _the_user(leases, who, config).key
        # The user as it is under our lease, not as it was found: a run may have synced it, failed it or
        # quarantined it in between.
        claim = leases.claim_user(key)
        if claim is None:
            raise TemporaryError(f"user {key} is being synced by a run right now; try again later")
        park = control.parked(engine, key)
        if park is not None:
            leases.release([claim])
            raise Refused(f"user {key} is parked by {park.parked_by}: {park.reason}; `email-sync unpark` it first")
        with backend.Session(config.backend, run_id) as session:
            pace = budget.for_backend(engine, config.backend, config.sync.host_id)
            client = Client(config.backend, config.sync.max_emails, run_id, threading.Event(), lambda: None, pace)
            outcome = client.sync(session, claim, Fixed(1))
        if outcome.kind.blames_configuration:
            leases.release([claim])
            raise Verdict(1, config.backend.sync_url, [outcome]).error()
        runlog.announce(outcome)
        leases.record([result_of(outcome, config.sync.quarantine_statuses)])
        return outcome


def reset(config: Config, who: str | None) -> int:
    """Clear the backoff and quarantine of one user (None: of every failing user), so the next cycle retries it.
    How many."""
    with _ready(config) as engine:
        leases = Leases(engine, config.users, config.sync, "reset")
        keys = None if who is None else [_the_user(leases, who, config).key]
        return leases.reset(keys)


def list_users(config: Config, which: str | None, limit: int) -> list[str]:
    """One line per user: due now (the default, oldest first), failing, leased or parked."""
    with _ready(config, writing=False) as engine, db.transaction(engine) as connection:
        if which in (None, "due"):
            return _due_lines(connection, config, limit)
        if which == "parked":
            return [
                status.render_parked(user) for user in control.parked_users(connection, db.dialect_of(engine), limit)
            ]
        return [status.render_user(user) for user in overview.listed(connection, which, limit)]


def _due_lines(connection: Connection, config: Config, limit: int) -> list[str]:
    return [
        f"{user:<24} {'never synced' if age is None else 'last synced ' + brief(age) + ' ago'}"
        for user, age in overview.due(connection, config, limit)
    ]


DRY_RUN_LISTED = 10


def dry_run(config: Config, limit: int | None) -> list[str]:
    """`email-sync run --dry-run [--limit N]`: whom `run [--limit N]` would claim now and in which order; no lease,
    no call, no run row. Without a limit it lists the first few."""
    most = config.sync.max_users_per_run
    cap = most if limit is None else min(limit, most)
    with _ready(config) as engine, db.transaction(engine) as connection:
        mode = control.read(connection)
        now = backlog.read(connection, config)
        claims = min(now.due, cap) if mode.claims else 0
        run = "a run" if limit is None else f"a run with --limit {limit}"
        lines = [
            f"fleet: {mode.describe()}",
            f"due now: {now.due}; {run} would claim {claims} (sync.max_users_per_run {most})",
        ]
        listed = DRY_RUN_LISTED if limit is None else cap
        if not mode.claims:
            return [*lines, "a run claims nobody until `email-sync resume`"]
        if now.due:
            oldest = "-" if now.oldest_age_s is None else f"last synced {brief(now.oldest_age_s)} ago"
            lines.append(f"oldest due: {oldest} ({now.never_synced} never synced)")
            lines.append(f"the first {min(listed, now.due)}, in the order a run takes them:")
            lines += ["  " + line for line in _due_lines(connection, config, listed)]
        return lines


def set_fleet_mode(config: Config, mode: str, reason: str | None) -> None:
    """`pause`, `drain`, `resume`: every host's runs see it within a second."""
    by = control.operator()
    with _ready(config) as engine:
        control.set_mode(engine, mode, by, reason)
    structlog.get_logger().info("fleet_mode_set", mode=mode, changed_by=by, reason=reason)


def park(config: Config, who: str, reason: str) -> None:
    by = control.operator()
    with _ready(config) as engine:
        claim = _the_user(Leases(engine, config.users, config.sync, "park"), who, config)
        control.park(engine, claim.key, by, reason)
    structlog.get_logger().info("user_parked", user_id=claim.user_id, parked_by=by, reason=reason)


def unpark(config: Config, who: str) -> None:
    with _ready(config) as engine:
        claim = _the_user(Leases(engine, config.users, config.sync, "unpark"), who, config)
        if not control.unpark(engine, claim.key):
            raise UsageError(f"user {claim.key} is not parked")
    structlog.get_logger().info("user_unparked", user_id=claim.user_id)


@contextmanager
def _ready(config: Config, *, writing: bool = True) -> Iterator[Engine]:
    """An engine on a database whose schema is current, for one command."""
    with db.connected(config.database) as engine:
        schema.check_ready(engine, config.users, writing=writing)
        yield engine


def _the_user(leases: Leases, who: str, config: Config) -> Claim:
    claim = leases.find(who)
    if claim is None:
        raise UsageError(f"no single user has the id or email {who!r} in {config.users.table}")
    return claim
