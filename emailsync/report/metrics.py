"""Prometheus metrics of each run, as a node_exporter textfile-collector file written by prometheus_client.

The file is written at a run's start (``email_sync_run_in_progress 1``: a long run is not a dead timer) and at its
end, each time whole, through a temporary file renamed over the old one. Every series is in every file, so an
alert on one never resolves because it vanished: what only the database knows is read at the end of a run, and
while the database is unreachable the previous file's values stay (with ``email_sync_database_up 0`` and the time
they were read), NaN where nothing was ever known. prometheus_client is imported only when a file is written: a
run without metrics does not pay for it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from emailsync import __version__
from emailsync.errors import DatabaseUnavailable
from emailsync.model import RunCounts
from emailsync.store import control, runs
from emailsync.store.db import dialect_of, transaction
from emailsync.store.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from emailsync.config.settings import Config
    from emailsync.store.backlog import Backlog

log = structlog.get_logger()

NAN = math.nan
USER_OUTCOMES = ("synced", "failed", "skipped")
FLEET_MODES = (control.RUNNING, control.PAUSED, control.DRAINING)

Labels = tuple[tuple[str, str], ...]
Values = dict[str, dict[Labels, float]]  # series name -> {label pairs: value}


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    always: tuple[str, ...] = ()  # the values of the one label that are written even when unknown (as NaN)
    counter: bool = False


SERIES = (
    Series(
        "email_sync_build_info",
        "This email-sync: its version and the schema version it runs on.",
        ("version", "schema"),
    ),
    Series("email_sync_run_in_progress", "1 from a run's start to its end: a long run, not a dead timer."),
    Series("email_sync_run_started_timestamp_seconds", "When the run in progress, else the last run, started."),
    Series("email_sync_last_run_timestamp_seconds", "When the last run ended (Unix time)."),
    Series("email_sync_last_run_duration_seconds", "How long the last run took."),
    Series(
        "email_sync_last_run_success",
        "1 unless the last run failed: it ended ok, was stopped by systemd, or heeded a pause or drain.",
    ),
    Series("email_sync_last_run_outcome", "The last run's outcome, as a label.", ("outcome",)),
    Series("email_sync_last_run_due_users", "Users due when the last run started."),
    Series(
        "email_sync_last_run_users",
        "Users the last run finished, by outcome (summed over hosts: the fleet's last runs).",
        ("outcome",),
        USER_OUTCOMES,
    ),
    Series(
        "email_sync_concurrency_limit",
        'Calls in flight the last run allowed at its end: the limit concurrency = "auto" settled on, or the setting.',
    ),
    Series("email_sync_max_staleness_seconds", "status.max_staleness: every user synced within this."),
    Series(
        "email_sync_database_up",
        "1 if the last run's end read the database; else 0, and the series read from it keep their last known values.",
    ),
    # Read from the database at a run's end:
    Series("email_sync_database_read_timestamp_seconds", "When the values read from the database were read."),
    Series(
        "email_sync_last_success_timestamp_seconds",
        "When a run of this host last ended ok (paused, drained or interrupted runs do not count; NaN: never).",
    ),
    Series("email_sync_users_due", "Users due now."),
    Series("email_sync_backlog_oldest_seconds", "Age of the oldest due user's last sync (0: none, or never synced)."),
    Series("email_sync_users_in_backoff", "Users waiting after failures."),
    Series("email_sync_users_parked", "Users parked by an operator or quarantined."),
    Series("email_sync_users_quarantined", "Users the runs quarantined after permanent failures (of the parked)."),
    Series(
        "email_sync_oldest_sync_age_seconds",
        "Since the least recently synced user's last sync, backoff included (0: nobody synced yet).",
    ),
    Series("email_sync_users_over_max_staleness", "Users whose last sync is older than max_staleness."),
    Series("email_sync_freshness_ok", "1 while every user is synced within max_staleness, else 0."),
    Series(
        "email_sync_fleet_mode",
        "1 for the fleet's mode (email-sync pause, drain, resume), 0 for the others.",
        ("mode",),
        FLEET_MODES,
    ),
    Series("email_sync_fleet_mode_changed_timestamp_seconds", "When the fleet's mode last changed (NaN: never)."),
    Series(
        "email_sync_hosts_awaiting_upgrade",
        "Hosts whose latest run stood aside: their release is older than the database's schema.",
    ),
    Series(
        "email_sync_host_awaiting_upgrade",
        "1 for each host awaiting an upgrade, labelled with the release it runs; no sample when none awaits.",
        ("host", "release"),
    ),
    Series(
        "email_sync_user_syncs_total",
        "Users this host's finished runs handled, by outcome, from the runs table.",
        ("outcome",),
        USER_OUTCOMES,
        counter=True,
    ),
    Series(
        "email_sync_runs_total",
        "This host's finished runs, by outcome, from the runs table.",
        ("outcome",),
        counter=True,
    ),
)
SERIES_BY_NAME = {series.name: series for series in SERIES}


def run_started(textfile: str) -> None:
    """Mark a run in progress; every other value stays as the last run left it."""
    if not textfile:
        return
    values = _previous(textfile)
    values["email_sync_run_in_progress"] = {(): 1.0}
    values["email_sync_run_started_timestamp_seconds"] = {(): time.time()}
    _write(textfile, values)


def run_finished(
    config: Config,
    outcome: str,
    counts: RunCounts,
    duration_s: float,
    concurrency_limit: int,
    backlog: Backlog | None,
    engine: Engine | None,
) -> None:
    """The run's own facts, and what the database says now when ``backlog`` (read by the caller) says it could
    be read; else the last known values."""
    textfile = config.metrics.textfile
    if not textfile:
        return
    values = _previous(textfile)
    finished = time.time()
    values.update(
        {
            "email_sync_run_in_progress": {(): 0.0},
            "email_sync_run_started_timestamp_seconds": {(): finished - duration_s},
            "email_sync_last_run_timestamp_seconds": {(): finished},
            "email_sync_last_run_duration_seconds": {(): duration_s},
            "email_sync_last_run_success": {(): float(outcome in runs.HEALTHY_OUTCOMES)},
            "email_sync_last_run_outcome": {(("outcome", outcome),): 1.0},
            "email_sync_last_run_due_users": {(): float(counts.due)},
            "email_sync_last_run_users": _by_outcome(counts.synced, counts.failed, counts.skipped),
            "email_sync_concurrency_limit": {(): float(concurrency_limit)},
            "email_sync_max_staleness_seconds": {(): float(config.status.max_staleness)},
        }
    )
    database = None
    if backlog is not None and engine is not None:
        try:
            database = _from_database(engine, config, backlog)
        except DatabaseUnavailable as error:  # gone since the backlog was read: the run's outcome stands
            log.warning("metrics_database_unavailable", error=str(error))
    values["email_sync_database_up"] = {(): float(database is not None)}
    values.update(database or {})
    _write(textfile, values)


def _from_database(engine: Engine, config: Config, backlog: Backlog) -> Values:
    """The series only the database knows. Its ages become Unix times by this host's clock, the clock the
    textfile's mtime and the other timestamps are in."""
    d = dialect_of(engine)
    host = config.sync.host_id
    with transaction(engine) as connection:
        last_ok = runs.last_ok_age(connection, d, host)
        totals = runs.totals(connection, host)
        mode = control.read(connection)
        changed = control.changed_age(connection, d)
        awaiting = runs.awaiting_upgrade(connection, d, config.status.stale_after)
    now = time.time()
    fresh = backlog.freshness
    return {
        "email_sync_database_read_timestamp_seconds": {(): now},
        "email_sync_last_success_timestamp_seconds": {(): NAN if last_ok is None else now - last_ok},
        "email_sync_users_due": {(): float(backlog.due)},
        "email_sync_backlog_oldest_seconds": {(): backlog.oldest_age_s or 0.0},
        "email_sync_users_in_backoff": {(): float(backlog.in_backoff)},
        "email_sync_users_parked": {(): float(backlog.parked)},
        "email_sync_users_quarantined": {(): float(backlog.quarantined)},
        "email_sync_oldest_sync_age_seconds": {(): fresh.oldest_sync_age_s or 0.0},
        "email_sync_users_over_max_staleness": {(): float(fresh.over)},
        "email_sync_freshness_ok": {(): float(fresh.holds)},
        "email_sync_fleet_mode": {(("mode", m),): float(m == mode.mode) for m in FLEET_MODES},
        "email_sync_fleet_mode_changed_timestamp_seconds": {(): NAN if changed is None else now - changed},
        "email_sync_hosts_awaiting_upgrade": {(): float(len(awaiting))},
        "email_sync_host_awaiting_upgrade": {(("host", a.host), ("release", a.release or "")): 1.0 for a in awaiting},
        "email_sync_user_syncs_total": _by_outcome(
            *(sum(int(getattr(row, o)) for row in totals) for o in USER_OUTCOMES)
        ),
        "email_sync_runs_total": {(("outcome", row.outcome),): float(row.runs) for row in totals},
    }


def _by_outcome(synced: int, failed: int, skipped: int) -> dict[Labels, float]:
    return {(("outcome", o),): float(n) for o, n in zip(USER_OUTCOMES, (synced, failed, skipped), strict=True)}


def _previous(textfile: str) -> Values:
    """The values of the file the last run wrote, of the series this version writes; empty when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = Path(textfile).read_text()
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError):  # no file yet, or not ours to read: nothing is known
        return {}
    values: Values = {}
    for family in families:
        for sample in family.samples:
            series = SERIES_BY_NAME.get(sample.name)
            if series is not None and tuple(sorted(sample.labels)) == tuple(sorted(series.labels)):
                labels = tuple((name, sample.labels[name]) for name in series.labels)
                values.setdefault(sample.name, {})[labels] = float(sample.value)
    return values


def _complete(values: Values) -> Iterator[tuple[Series, dict[Labels, float]]]:
    """Every series in SERIES order, NaN where a value was never known; build_info is always this build's."""
    values["email_sync_build_info"] = {(("version", __version__), ("schema", str(SCHEMA_VERSION))): 1.0}
    for series in SERIES:
        samples = values.get(series.name, {})
        if not samples and not series.labels:
            samples = {(): NAN}
        for value in series.always:
            samples.setdefault(((series.labels[0], value),), NAN)
        yield series, samples


def _write(textfile: str, values: Values) -> None:
    """Write atomically (prometheus_client renames a temporary file over the target), readable by node_exporter
    whatever the unit's UMask; a failure is a warning: the run's own outcome decides the exit code."""
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    families: list[Any] = []
    for series, samples in _complete(values):
        family_type = CounterMetricFamily if series.counter else GaugeMetricFamily
        family = family_type(series.name, series.help, labels=series.labels)
        for labels, value in samples.items():
            family.add_metric([value for _, value in labels], value)
        families.append(family)

    class Snapshot(Collector):
        def collect(self) -> Iterator[Any]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    umask = os.umask(0o022)
    try:
        write_to_textfile(textfile, registry)
    except OSError as error:
        log.warning("metrics_not_written", textfile=textfile, error=f"{error.strerror}: {error.filename}")
    finally:
        os.umask(umask)
