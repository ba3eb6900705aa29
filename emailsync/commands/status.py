"""`email-sync status` and `email-sync users`: what only email-sync knows, for operators and monitors.

Everything time-related is computed by the database clock, like the cycle's decisions, so the report agrees with
what the next run will do whichever host asks.
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Engine

from emailsync.config.settings import Config
from emailsync.store import backlog, control, overview
from emailsync.store import runs as runs_table
from emailsync.store.backlog import Freshness
from emailsync.store.db import dialect_of, snapshot
from emailsync.store.overview import UserRow
from emailsync.store.schema import schema_version
from emailsync.systemd import systemctl
from emailsync.systemd.timespan import brief

RECENT_RUNS = 5
LISTED = 10
DAY = 86400.0
COLUMNS = 48  # of the day's chart: half an hour each
LEVELS = "▁▂▃▄▅▆▇█"  # a column's height: the lowest for runs that synced nobody, the highest for the day's most
FAILED, NO_RUN = "✘", "·"
WIDTH = 80  # columns of the report when it goes anywhere but a terminal
MIN_TEXT = 20  # a terminal narrower than the indent plus this still shows words, not one character a line


@dataclass(frozen=True)
class RunRow:
    started_at: str
    host: str
    due: int | None
    synced: int
    failed: int
    skipped: int
    outcome: str
    duration_s: float | None
    error: str | None


@dataclass(frozen=True)
class Column:
    """Half an hour of the day's chart: how many runs started in it, what they synced, whether one failed."""

    runs: int = 0
    synced: int = 0
    failed: bool = False


@dataclass
class Status:
    schema_version: int | None
    runs: list[RunRow]
    due_now: int
    never_synced_due: int
    oldest_due_age_s: float | None
    freshness: Freshness
    in_backoff: int
    backoff: list[UserRow]
    leased: int
    leases: list[UserRow]
    last_success_age_s: float | None
    fleet: control.FleetMode
    parked: int
    quarantined: int
    parked_users: list[control.Parked]
    awaiting_upgrade: list[runs_table.AwaitingUpgrade] = field(default_factory=list)
    timer: dict[str, str] = field(default_factory=dict)
    day: list[Column] = field(default_factory=list)  # the last 24 hours, oldest first
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def _utc(moment: datetime | str) -> str:
    """PostgreSQL hands timestamptz over in the transaction's zone (the app's last_sync zone): show UTC, as the
    log does. SQLite's are UTC text already."""
    return str(moment.astimezone(UTC) if isinstance(moment, datetime) else moment)


def gather(engine: Engine, config: Config) -> Status:
    """Everything `status` shows that the database knows, read from one snapshot: its counts and lists agree with
    each other however many runs write meanwhile."""
    d = dialect_of(engine)
    with snapshot(engine) as connection:
        version = schema_version(connection)
        runs = [
            RunRow(
                _utc(row.started_at),
                row.host,
                row.due,
                row.synced,
                row.failed,
                row.skipped,
                row.outcome,
                None if row.duration is None else round(float(row.duration), 1),
                row.error,
            )
            for row in runs_table.recent(connection, d, RECENT_RUNS)
        ]
        day = _day(runs_table.since(connection, d, DAY))
        last_success = runs_table.last_success_age(connection, d)
        fleet = control.read(connection)
        parked_users = control.parked_users(connection, d, LISTED)
        awaiting = []
        if (version or 0) >= runs_table.RELEASE_SINCE:  # `status` may be asked before a run has migrated
            awaiting = runs_table.awaiting_upgrade(connection, d, config.status.stale_after)
        now = backlog.read(connection, config)
        backoff = overview.listed(connection, "failing", LISTED)
        leased = overview.count_leased(connection)
        leases = overview.listed(connection, "leased", LISTED)
    status = Status(
        schema_version=version,
        runs=runs,
        due_now=now.due,
        never_synced_due=now.never_synced,
        oldest_due_age_s=now.oldest_age_s,
        freshness=now.freshness,
        in_backoff=now.in_backoff,
        backoff=backoff,
        leased=leased,
        leases=leases,
        last_success_age_s=None if last_success is None else round(last_success),
        fleet=fleet,
        parked=now.parked,
        quarantined=now.quarantined,
        parked_users=parked_users,
        awaiting_upgrade=awaiting,
        timer=timer_state(),
        day=day,
    )
    status.problems = _problems(status, config)
    return status


def _day(rows: list[Any]) -> list[Column]:
    """The runs of the last 24 hours (rows of age, synced, outcome), every host's, in half-hour columns."""
    width = DAY / COLUMNS
    columns = [Column() for _ in range(COLUMNS)]
    for row in rows:
        index = COLUMNS - 1 - min(COLUMNS - 1, max(0, int(float(row.age) // width)))
        column = columns[index]
        failed = row.outcome not in (*runs_table.HEALTHY_OUTCOMES, "running")
        columns[index] = Column(column.runs + 1, column.synced + row.synced, column.failed or failed)
    return columns


def chart(day: list[Column]) -> tuple[str, str]:
    """The day in one line, and its key: a column's height is what it synced against the day's most."""
    most = max((column.synced for column in day), default=0)

    def mark(column: Column) -> str:
        if not column.runs:
            return NO_RUN
        if column.failed:
            return FAILED
        if not column.synced:
            return LEVELS[0]
        return LEVELS[max(1, -(-column.synced * (len(LEVELS) - 1) // most))]

    scale = f"{LEVELS[-1]} {most} synced in {DAY / COLUMNS / 60:g} min" if most else f"{LEVELS[0]} nobody synced"
    key = f"{scale}; {FAILED} a run failed; {NO_RUN} no run"
    return "".join(mark(column) for column in day), key


def _problems(status: Status, config: Config) -> list[str]:
    problems = []
    finished = [run for run in status.runs if run.outcome != "running"]
    if finished and finished[0].outcome not in runs_table.HEALTHY_OUTCOMES:
        problems.append(f"the last run failed: {finished[0].outcome}: {finished[0].error or ''}".rstrip(": "))
    stale = config.status.stale_after
    if status.last_success_age_s is None or status.last_success_age_s > stale:
        problems.append(
            f"no successful run in the last {stale:g}s ({config.status.missed_intervals} x status.timer_interval)"
        )
    if not status.freshness.holds:
        problems.append(status.freshness.problem())
    return problems


def timer_state() -> dict[str, str]:
    """The timer's last and next trigger, asked from systemd when it runs here; empty otherwise."""
    return systemctl.show("email-sync.timer", "LastTriggerUSec", "NextElapseUSecRealtime", "ActiveState")


def render(status: Status, width: int = WIDTH) -> str:
    """The human report, every line at most ``width`` columns: a long cause (an error, a reason) is wrapped, never
    cut, its continuation lines indented under it."""
    lines = [f"email-sync: {'healthy' if status.healthy else 'UNHEALTHY'} (schema v{status.schema_version})"]
    lines += [f"  ! {problem}" for problem in status.problems]
    if not status.fleet.claims:
        lines.append(f"fleet: {status.fleet.describe()}, since {_utc(status.fleet.changed_at or '-')[:19]}")
    if status.timer:
        lines.append(f"timer: {status.timer.get('ActiveState', '?')}, last {status.timer.get('LastTriggerUSec', '-')}")
        lines.append(f"       next {status.timer.get('NextElapseUSecRealtime', '-')}")
    backlog = "none" if status.oldest_due_age_s is None else f"oldest synced {brief(status.oldest_due_age_s)} ago"
    lines.append(f"due now: {status.due_now} ({status.never_synced_due} never synced; {backlog})")
    fresh = status.freshness
    lines.append(
        f"freshness: {'holds' if fresh.holds else 'BROKEN'}, {fresh.over} over {brief(fresh.max_staleness_s)}; "
        f"least recently synced {brief(fresh.oldest_sync_age_s)} ago"
    )
    if status.day:
        line, key = chart(status.day)
        lines += [f"last 24h  {line} now", f"{'':10}{key}"]
    lines.append("")
    lines.append(f"{'last runs (started)':<27}{'host':<12}{'due':>7}{'synced':>7}{'failed':>7}{'skip':>5} outcome")
    for run in status.runs:
        lines.append(
            f"{run.started_at[:26]:<27}{run.host[:11]:<12}{_n(run.due):>7}{run.synced:>7}{run.failed:>7}"
            f"{run.skipped:>5} {run.outcome} {brief(run.duration_s)}"
        )
    lines.append("")
    lines.append(f"in backoff: {status.in_backoff}")
    lines += ["  " + render_user(user) for user in status.backoff]
    lines.append(f"leased now: {status.leased}")
    lines += ["  " + render_user(user) for user in status.leases]
    lines.append(f"parked: {status.parked} ({status.quarantined} quarantined)")
    lines += ["  " + render_parked(user) for user in status.parked_users]
    if status.awaiting_upgrade:
        lines.append(f"awaiting upgrade (release older than schema v{status.schema_version}, syncing nobody):")
        lines += [
            f"  {host.host:<30} {host.release or '?'}, last run {brief(host.last_run_age_s)} ago"
            for host in status.awaiting_upgrade
        ]
    return "\n".join(wrapped for line in lines for wrapped in _wrap(line, width))


def terminal_width(stream: TextIO) -> int:
    """The width to render for: the terminal's (or $COLUMNS) when ``stream`` is one, else WIDTH (a pipe, a file,
    a mail from cron: whatever reads it later has no width to tell)."""
    return shutil.get_terminal_size((WIDTH, 24)).columns if stream.isatty() else WIDTH


def _wrap(line: str, width: int) -> list[str]:
    """``line`` in lines of at most ``width`` columns, continued two columns deeper than it starts (a URL is kept
    whole where it fits, a word longer than a line is broken: every character shown)."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    width = max(width, len(indent) + MIN_TEXT)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False)


def render_user(user: UserRow) -> str:
    """One user of our state table on one line, its whole last error (`status` wraps it)."""
    if user.lease_owner:
        return (
            f"{user.user_id[:20]:<21}leased by {(user.lease_host or '?')[:16]} run {user.lease_owner[:8]}, "
            f"{brief(user.lease_left_s)} left"
        )
    error = " ".join((user.last_error or "").split())
    return f"{user.user_id[:20]:<21}x{user.failures:<3} retry in {brief(user.next_attempt_in_s):<7} {error}"


def render_parked(user: control.Parked) -> str:
    """One parked user on one line: who parked it, how long ago, and the whole reason (`status` wraps it)."""
    reason = " ".join((user.reason or "").split())
    return f"{user.user_id[:20]:<21}by {user.parked_by[:24]} {brief(user.age_s)} ago: {reason}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
