"""What a run tells the journal about its users: a bounded number of lines, whatever the number of users.

journald keeps at most RateLimitBurst= lines of a unit per RateLimitIntervalSec= and priority (journald.conf(5)),
and drops the rest, so a line per user would cost a catch-up run its own cycle_finished. Hence:

- a success is a ``user_synced`` debug line, which the filtering logger drops before rendering at the default
  level;
- the first FAILURES_SHOWN failures of each kind in a run are ``user_failed`` warnings, the rest debug lines,
  counted and sampled in ``failures_summarized`` (warning); a bug's traceback is an error line, once per bug and
  run, whatever the count;
- every PROGRESS_EVERY seconds, one ``progress`` line (info) with the run's counts so far, then the summary if
  failures went unshown since the last one; the run ends with a last summary before its cycle_finished.

The lines a user is named in individually are the database's business too: `email-sync users --failing`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from emailsync.model import Kind, Outcome, RunCounts

FAILURES_SHOWN = 100  # user_failed warnings per kind and run; the rest are counted
SAMPLES = 10  # user ids per kind that a summary names of the failures not shown
PROGRESS_EVERY = 60.0  # seconds between two progress lines of a run

log = structlog.get_logger()


def _fields(outcome: Outcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "user_id": outcome.claim.user_id,
        "status": outcome.status,
        "duration_ms": outcome.duration_ms,
        "attempts": outcome.attempts,
    }
    if outcome.kind is Kind.SYNCED:
        fields["emails_synced"] = outcome.emails_synced
    else:
        fields |= {"kind": outcome.kind.value, "error": outcome.error}
    return fields


def announce(outcome: Outcome) -> None:
    """One user's outcome at full voice: for a sync an operator asked for by name."""
    if outcome.kind is Kind.SYNCED:
        log.info("user_synced", **_fields(outcome))
    elif outcome.bug is not None:
        log.error("user_failed", **_fields(outcome), exc_info=outcome.bug)
    else:
        log.warning("user_failed", **_fields(outcome))


class RunLog:
    """The per-user lines of one run, kept within a bound the journal keeps whole."""

    def __init__(self, counts: RunCounts, now: float) -> None:
        # Bound once: a level the config filters out is a method that does nothing, with no lookup per call.
        self.log = log.bind()
        self.counts = counts
        self.began = now
        self.next_progress = now + PROGRESS_EVERY
        self.failed: Counter[str] = Counter()
        self.unshown: Counter[str] = Counter()
        self.samples: dict[str, list[Any]] = {}
        self.summarized = 0  # failures not shown, as of the last summary

    def outcome(self, outcome: Outcome) -> None:
        """Log a recorded outcome (synced or failed; not a skip)."""
        if outcome.kind is Kind.SYNCED:
            self.log.debug("user_synced", **_fields(outcome))
            return
        kind = outcome.kind.value
        self.failed[kind] += 1
        if outcome.bug is not None:  # a bug of ours, its traceback logged with the first user it fails (once a run)
            self.log.error("user_failed", **_fields(outcome), exc_info=outcome.bug)
            return
        if self.failed[kind] <= FAILURES_SHOWN:
            self.log.warning("user_failed", **_fields(outcome))
            return
        self.log.debug("user_failed", **_fields(outcome))
        self.unshown[kind] += 1
        sample = self.samples.setdefault(kind, [])
        if len(sample) < SAMPLES:
            sample.append(outcome.claim.user_id)

    def tick(self, now: float, in_flight: int) -> None:
        """Called from the run's loop: a progress line when one is due."""
        if now < self.next_progress:
            return
        self.next_progress = now + PROGRESS_EVERY
        elapsed = now - self.began
        counts = self.counts
        done = counts.synced + counts.failed + counts.skipped
        self.log.info(
            "progress",
            elapsed_s=round(elapsed, 1),
            due=counts.due,
            synced=counts.synced,
            failed=counts.failed,
            skipped=counts.skipped,
            in_flight=in_flight,
            users_per_s=round(done / elapsed, 1) if elapsed > 0 else None,
        )
        self.summarize()

    def summarize(self) -> None:
        """A failures_summarized line if failures went unshown since the last one: the run's counts per kind."""
        unshown = sum(self.unshown.values())
        if unshown == self.summarized:
            return
        self.summarized = unshown
        self.log.warning(
            "failures_summarized",
            failed=dict(self.failed),
            not_shown=dict(self.unshown),
            sample_user_ids=self.samples,
            shown_per_kind=FAILURES_SHOWN,
        )
