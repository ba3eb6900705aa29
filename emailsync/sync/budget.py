"""The fleet's call budget: ``backend.max_rate`` calls per second shared by every host on the database, and the
shared cooldown that a 429/503 with Retry-After seen by any host puts on all of them.

The budget is a schedule, kept in one row of the database: ``next_slot`` is the first start time (database clock,
Unix seconds) nobody holds yet. A host leases a batch of ``n`` consecutive slots, ``1/max_rate`` apart, in one
UPDATE, and starts its calls at those times; so the fleet's calls are spaced as one process's would be, however
many hosts draw from it and however far each is into its batch, and there is one round trip per batch, not per
call. A slot is good only at its time: one a host could not use (it stopped, or its threads were busy) is lost,
never spent later, which keeps any second at the budget (a slot late by more than ``STALE`` is skipped).

``cooldown_until`` is when calls may start again after the backend asked us to wait. Hosts learn of it with every
lease, and re-read it every ``POLL`` while they are calling; a host that learns of one drops the slots it holds.

The row's statements are emailsync/store/budget.py's; the same SQL runs on SQLite, where the budget is shared by the
runs that share the file.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy import Engine

from emailsync.config.settings import BackendConfig
from emailsync.store.budget import BudgetSql
from emailsync.store.db import dialect_of, with_retry

log = structlog.get_logger()

BATCH_SECONDS = 0.25  # a lease covers this much of the budget: max_rate/4 leases a second for the whole fleet
POLL = 0.25  # seconds: how stale a host's knowledge of the cooldown may be while it is calling
STALE = 0.05  # seconds: a slot this far in the past is skipped rather than used late, bunched with the next ones


class Pace(Protocol):
    """When a call may start, and the backend's requests to wait."""

    def wait(self, stop: threading.Event) -> None: ...

    def cool_down(self, seconds: float, status: int | None) -> None: ...


class Unlimited:
    """max_rate = 0: calls start as soon as a thread is free, and the database is not asked."""

    def wait(self, stop: threading.Event) -> None:
        return None

    def cool_down(self, seconds: float, status: int | None) -> None:
        return None


def batch_size(rate: float) -> int:
    """Slots per lease: a quarter second of the budget, at least one."""
    return max(1, math.ceil(rate * BATCH_SECONDS))


@dataclass
class Schedule:
    """The slots a host holds, on its monotonic clock."""

    first: float = 0.0
    gap: float = 0.0
    left: int = 0

    def take(self) -> float:
        at = self.first
        self.first += self.gap
        self.left -= 1
        return at


class FleetBudget:
    """The fleet's budget as one host draws from it; safe to share between the host's call threads."""

    def __init__(self, engine: Engine, rate: float, cooldown_max: float, host: str) -> None:
        self.engine = engine
        self.rate = rate
        self.batch = batch_size(rate)
        self.cooldown_max = cooldown_max
        self.host = host
        self.sql = BudgetSql(dialect_of(engine))
        self.lock = threading.Lock()
        self.schedule = Schedule(gap=1.0 / rate)
        self.cooldown_until = 0.0  # monotonic
        self.checked_at = -math.inf  # monotonic: when the cooldown was last read
        self.generation = 0  # bumped when a cooldown drops the schedule: a slot taken before it is void
        with_retry(engine, self.sql.ensure_row)

    def wait(self, stop: threading.Event) -> None:
        """Until this host's next slot; a cooldown learned meanwhile voids the slot and the wait starts over."""
        while not stop.is_set():
            with self.lock:
                at, generation, is_slot = self._next_slot()
            if stop.wait(max(0.0, at - time.monotonic())):
                return
            with self.lock:
                now = time.monotonic()
                if now - self.checked_at > POLL:
                    self._learn(with_retry(self.engine, self.sql.cooldown_in), now)
                if is_slot and generation == self.generation and not self._cooling(now):
                    return

    def cool_down(self, seconds: float, status: int | None) -> None:
        """The backend answered ``status`` with Retry-After ``seconds``: hold every host's calls until then
        (at most retry_backoff_max, the longest wait a run can sit through without starving its watchdog). One
        warning per cooldown: the calls in flight together are all told to wait, and say nothing new."""
        seconds = min(seconds, self.cooldown_max)
        with self.lock:
            with_retry(self.engine, lambda c: self.sql.cool_down(c, seconds, self.host))
            until = time.monotonic() + seconds
            new = until > self.cooldown_until + POLL
            self._cool_until(until)
        if new:
            log.warning("backend_cooldown", status=status, seconds=seconds)

    def _next_slot(self) -> tuple[float, int, bool]:
        """A slot (monotonic time), leasing a batch when none is left, or the end of a cooldown (False); with the
        lock held."""
        while True:
            now = time.monotonic()
            if now - self.checked_at > POLL:
                self._learn(with_retry(self.engine, self.sql.cooldown_in), now)
            if self._cooling(now):
                return self.cooldown_until, self.generation, False
            while self.schedule.left and self.schedule.first < now - STALE:
                self.schedule.take()
            if self.schedule.left:
                return self.schedule.take(), self.generation, True
            start_in, cooldown_in = with_retry(self.engine, lambda c: self.sql.lease(c, self.batch, self.rate))
            now = time.monotonic()
            self._learn(cooldown_in, now)
            self.schedule = Schedule(now + start_in, 1.0 / self.rate, self.batch)

    def _learn(self, cooldown_in: float, now: float) -> None:
        self.checked_at = now
        if cooldown_in > 0 and now + cooldown_in > self.cooldown_until + POLL:  # not the one this host knows
            log.info("backend_cooldown_seen", seconds=round(cooldown_in, 3))
        if cooldown_in > 0:
            self._cool_until(now + cooldown_in)

    def _cool_until(self, until: float) -> None:
        if until > self.cooldown_until:
            self.cooldown_until = until
            self.schedule = Schedule(gap=1.0 / self.rate)
            self.generation += 1

    def _cooling(self, now: float) -> bool:
        return now < self.cooldown_until


def for_backend(engine: Engine, config: BackendConfig, host: str) -> Pace:
    """The fleet budget when backend.max_rate is set; otherwise no limit and no database round trip."""
    if config.max_rate <= 0:
        return Unlimited()
    return FleetBudget(engine, config.max_rate, config.retry_backoff_max, host)
