"""What an operator does by hand: sync one user now, clear backoff, list users. The work behind `email-sync sync`,
`reset` and `users`, so that cli.py only parses and dispatches."""

from __future__ import annotations

import threading
import uuid

import structlog

from emailsync import backend, budget, db, schema, status
from emailsync.backend import Client
from emailsync.config import Config
from emailsync.cycle import Verdict, result_of
from emailsync.errors import TemporaryError, UsageError
from emailsync.leases import Leases
from emailsync.model import Claim, Outcome


def sync_user(config: Config, who: str) -> Outcome:
    """`email-sync sync USER`: one user now, whatever its interval or backoff, but never under a live lease."""
    run_id = str(uuid.uuid4())
    structlog.contextvars.bind_contextvars(run_id=run_id)
    with db.connected(config.database) as engine:
        schema.check_ready(engine, config.users)
        leases = Leases(engine, config.users, config.sync, run_id)
        claim = _the_user(leases, who, config)
        if not leases.claim_user(claim):
            raise TemporaryError(f"user {claim.key} is being synced by a run right now; try again later")
        with backend.Session(config.backend, run_id) as session:
            pace = budget.for_backend(engine, config.backend, config.sync.host_id)
            client = Client(config.backend, config.sync.max_emails, run_id, threading.Event(), lambda: None, pace)
            outcome = client.sync(session, claim)
        if outcome.kind.blames_configuration:
            leases.release([claim])
            raise Verdict(1, config.backend.sync_url, [outcome]).error()
        leases.record([result_of(outcome)])
        return outcome


def reset(config: Config, who: str | None) -> int:
    """Clear the backoff of one user (None: of every failing user), so the next cycle retries. How many."""
    with db.connected(config.database) as engine:
        schema.check_ready(engine, config.users)
        leases = Leases(engine, config.users, config.sync, "reset")
        keys = None if who is None else [_the_user(leases, who, config).key]
        return leases.reset(keys)


def list_users(config: Config, which: str | None, limit: int) -> list[str]:
    """One line per user: due now (the default, oldest first), failing, or leased."""
    with db.connected(config.database) as engine:
        if which in (None, "due"):
            return [
                f"{user:<24} {'never synced' if age is None else 'last synced ' + status.duration(age) + ' ago'}"
                for user, age in status.list_due(engine, config, limit)
            ]
        return [status.render_user(user) for user in status.list_users(engine, config, which, limit)]


def _the_user(leases: Leases, who: str, config: Config) -> Claim:
    claim = leases.find(who)
    if claim is None:
        raise UsageError(f"no single user has the id or email {who!r} in {config.users.table}")
    return claim
