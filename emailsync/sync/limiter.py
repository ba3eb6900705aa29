"""Adaptive concurrency (``backend.concurrency = "auto"``): how many calls may be in flight, learnt from the answers,
and the gate that holds the call threads to it.

The backend's capacity is found the way TCP finds a path's (as Netflix's concurrency-limits does with its Vegas,
Gradient and AIMD limits; this one is ours, and smaller): a call that waits in the backend's queue takes longer, so
the mean latency of a round of calls, against the lowest such mean seen (the backend without a queue), says
whether the last step up was one too many. The limit starts at ``INITIAL`` and doubles every round while latency
stays flat (slow start); an overload answer (429/503/504, a timeout, no connection) or two rounds in a row of
risen latency halve it, back to the last limit known to be flat; from then on it grows by one per flat round and
falls to ``LATENCY_BACKOFF`` of itself on a latency rise, to ``OVERLOAD_BACKOFF`` on an overload answer. It stays
within 1..ceiling.

A round is ``max(limit, MIN_WINDOW)`` answers; after a cut, of calls started after it: the calls already in flight
when the limit fell were sent under the old one, so their answers would judge it twice. A limit the calls did not
reach (not enough work) is not raised: that it was fine says nothing about a higher one.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from emailsync.config.settings import BackendConfig

log = structlog.get_logger()

INITIAL = 8  # calls in flight before anything is known
MIN_WINDOW = 16  # answers per round at least: fewer are too noisy a mean at a small limit
TOLERANCE = 0.1  # a round's mean latency this much above the lowest round mean is a queue building up
LATENCY_BACKOFF = 0.9  # the limit after a latency rise, as a share of what it was (AIMD's multiplicative decrease)
OVERLOAD_BACKOFF = 0.75  # the same after an overload answer: the backend said so, it is the stronger signal
BASELINE_ROUNDS = 64  # the no-queue latency is the lowest mean of this many rounds: a backend slower for good is
# learnt as its new normal once that many rounds have all been slow, rather than holding the limit at 1 forever
LOG_EVERY = 1.0  # seconds: concurrency_changed at most this often
LOG_STEP = 0.1  # a change of at least this share of the last logged limit (and at least 1) is worth a line
WAKE_EVERY = 0.25  # seconds: how often a thread waiting at the gate looks whether the run is stopping


@dataclass
class Round:
    """The answers of one round: their latencies (successful calls only) and the most calls seen in flight."""

    answers: int = 0
    latency_sum: float = 0.0
    timed: int = 0
    peak: int = 0

    def add(self, rtt: float | None, in_flight: int) -> None:
        self.answers += 1
        self.peak = max(self.peak, in_flight)
        if rtt is not None:
            self.latency_sum += rtt
            self.timed += 1

    @property
    def mean(self) -> float | None:
        return self.latency_sum / self.timed if self.timed else None


@dataclass
class Limiter:
    """The limit as answers arrive: pure and deterministic, no clock and no threads (the Gate brings those)."""

    ceiling: int
    limit: int = 0  # 0: min(INITIAL, ceiling)
    slow_start: bool = True
    reason: str = "start"  # what moved the limit last
    latency: float | None = None  # the last round's mean latency (seconds)
    skip: int = 0  # answers still due from calls sent before the last cut
    suspect: bool = False  # in slow start, the last round's latency rose: a second such round ends it
    round: Round = field(default_factory=Round)
    means: deque[float] = field(default_factory=lambda: deque(maxlen=BASELINE_ROUNDS))

    def __post_init__(self) -> None:
        self.limit = min(self.limit or INITIAL, self.ceiling)

    @property
    def baseline(self) -> float | None:
        """The latency of the backend without a queue: the lowest round mean of late."""
        return min(self.means) if self.means else None

    def on_sample(self, rtt: float | None, in_flight: int, overloaded: bool) -> int:
        """One answer: ``rtt`` the seconds a successful call took (None for any other answer), ``in_flight`` the
        calls in flight as it came, this one included; ``overloaded`` whether it said the backend is overrun.
        Returns the new limit."""
        if self.skip:
            self.skip -= 1
            return self.limit
        if overloaded:
            self._cut(OVERLOAD_BACKOFF, "overload", in_flight)
            return self.limit
        self.round.add(rtt, in_flight)
        if self.round.answers >= max(self.limit, MIN_WINDOW):
            self._end_round(in_flight)
        return self.limit

    def _end_round(self, in_flight: int) -> None:
        finished, self.round = self.round, Round()
        mean = finished.mean
        if mean is None:  # no call succeeded: nothing learnt about latency
            return
        self.latency = mean
        self.means.append(mean)
        rising = mean > min(self.means) * (1 + TOLERANCE)
        if rising and self.slow_start and not self.suspect:
            self.suspect = True  # one noisy round must not end slow start at a tenth of the capacity
        elif rising:
            self._cut(LATENCY_BACKOFF, "latency", in_flight)
        elif finished.peak >= self.limit:
            self.suspect = False
            if self.slow_start:
                self._set(self.limit * 2, "slow_start", in_flight)
            else:
                self._set(self.limit + 1, "flat", in_flight)

    def _cut(self, share: float, reason: str, in_flight: int) -> None:
        """Lower the limit by ``share`` (by one at least); the first cut ends slow start, back to the last limit
        known to be flat, the half of this one."""
        wanted = self.limit / 2 if self.slow_start else min(self.limit * share, self.limit - 1)
        self.slow_start = False
        self._set(wanted, reason, in_flight)

    def _set(self, wanted: float, reason: str, in_flight: int) -> None:
        """The new limit, within 1..ceiling. After a cut, the answers of the calls in flight under the old limit
        are skipped: they would cut again for the same overrun. After a raise they are not: a round under the
        new limit mixes in a few under the old one, which only makes the next raise a little more careful."""
        limit = max(1, min(self.ceiling, math.floor(wanted)))
        if limit == self.limit:
            return
        if limit < self.limit:
            self.skip = max(0, in_flight - 1)
        self.limit, self.reason = limit, reason
        self.round = Round()


class Admission(Protocol):
    """Which calls may start: a fixed number in flight, or the adaptive Gate."""

    @property
    def limit(self) -> int: ...

    @property
    def threads(self) -> int: ...

    def enter(self, stop: threading.Event) -> bool: ...

    def leave(self, rtt: float | None, overloaded: bool) -> None: ...

    def withdraw(self) -> None: ...

    def ahead(self, batch: int) -> int: ...


@dataclass(frozen=True)
class Fixed:
    """backend.concurrency = N: N call threads, each free to call; nothing is measured or held."""

    concurrency: int

    @property
    def limit(self) -> int:
        return self.concurrency

    @property
    def threads(self) -> int:
        return self.concurrency

    def enter(self, stop: threading.Event) -> bool:
        return True

    def leave(self, rtt: float | None, overloaded: bool) -> None:
        return None

    def withdraw(self) -> None:
        return None

    def ahead(self, batch: int) -> int:
        """How far claims may run ahead of the calls: a whole batch, as nothing here is measured that a long
        claim could disturb."""
        return batch


class Gate:
    """At most the limiter's limit of calls in flight among ``ceiling`` call threads; each answer moves the limit."""

    def __init__(self, ceiling: int) -> None:
        self.limiter = Limiter(ceiling)
        self.threads = ceiling
        self.in_flight = 0
        self.changed = threading.Condition()
        self.logged = self.limiter.limit
        self.logged_at = -math.inf

    @property
    def limit(self) -> int:
        """The current limit; read without the lock (one int) so that the main loop never waits on call threads."""
        return self.limiter.limit

    def enter(self, stop: threading.Event) -> bool:
        """Wait for room under the limit; False when the run stops first (the call is not made)."""
        with self.changed:
            while self.in_flight >= self.limiter.limit:
                if stop.is_set():
                    return False
                self.changed.wait(WAKE_EVERY)
            self.in_flight += 1
            return True

    def leave(self, rtt: float | None, overloaded: bool) -> None:
        """A call entered has its answer: feed it to the limiter and let the next calls in."""
        with self.changed:
            before = self.limiter.limit
            limit = self.limiter.on_sample(rtt, self.in_flight, overloaded)
            self.in_flight -= 1
            if limit > before:
                self.changed.notify_all()
            else:
                self.changed.notify()
            self._log_change()

    def withdraw(self) -> None:
        """A call let in that will not be made after all: its room goes to the next, and the limiter learns
        nothing from it."""
        with self.changed:
            self.in_flight -= 1
            self.changed.notify()

    def ahead(self, batch: int) -> int:
        """How far claims may run ahead of the calls: as many as the limit, a batch at most. A claim of a whole
        batch holds the GIL long enough for the calls in flight to look slower, which the limiter takes for a
        backend under load."""
        return min(batch, self.limiter.limit)

    def _log_change(self) -> None:
        """concurrency_changed when the limit has moved a meaningful step since the last line, at most every
        LOG_EVERY: a limit that moves by one every round would otherwise be a line per round."""
        limiter = self.limiter
        now = time.monotonic()
        if abs(limiter.limit - self.logged) < max(1, LOG_STEP * self.logged) or now - self.logged_at < LOG_EVERY:
            return
        log.info(
            "concurrency_changed",
            limit=limiter.limit,
            previous=self.logged,
            reason=limiter.reason,
            latency_ms=_ms(limiter.latency),
            baseline_ms=_ms(limiter.baseline),
        )
        self.logged, self.logged_at = limiter.limit, now


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def admission(config: BackendConfig) -> Admission:
    """The gate of a run: adaptive under backend.concurrency = "auto", else the fixed number as it always was."""
    if isinstance(config.concurrency, int):
        return Fixed(config.concurrency)
    return Gate(config.max_concurrency)
