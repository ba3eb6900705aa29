"""Prometheus metrics after each run, as a node_exporter textfile-collector file.

Written to a temporary file beside the target and renamed over it, so the collector never reads half a file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from emailsync.runs import HEALTHY_OUTCOMES
from emailsync.status import Backlog


def render(
    outcome: str,
    duration_s: float,
    users: dict[str, int],
    backlog: Backlog | None,
    concurrency_limit: int,
    finished: float,
) -> str:
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: dict[str, float]) -> None:
        lines.append(f"# HELP email_sync_{name} {help_text}")
        lines.append(f"# TYPE email_sync_{name} gauge")
        lines.extend(f"email_sync_{name}{labels} {value:g}" for labels, value in samples.items())

    metric("last_run_timestamp_seconds", "When the last run finished (Unix time).", {"": finished})
    metric("last_run_duration_seconds", "How long the last run took.", {"": duration_s})
    metric(
        "last_run_success",
        "1 if the last run ended ok (or was stopped), else 0.",
        {"": 1.0 if outcome in HEALTHY_OUTCOMES else 0.0},
    )
    metric("last_run_outcome", "The last run's outcome, as a label.", {f'{{outcome="{outcome}"}}': 1.0})
    metric(
        "last_run_users",
        "Users of the last run: due at its start, synced, failed, skipped.",
        {f'{{state="{state}"}}': float(count) for state, count in users.items()},
    )
    metric(
        "concurrency_limit",
        'Calls in flight the last run allowed at its end: the limit concurrency = "auto" settled on, or the setting.',
        {"": float(concurrency_limit)},
    )
    if backlog is not None:
        metric("users_due", "Users due now.", {"": float(backlog.due)})
        metric(
            "backlog_oldest_seconds",
            "Age of the oldest due user's last sync (0: none, or never synced).",
            {"": backlog.oldest_age_s or 0.0},
        )
        metric("users_in_backoff", "Users waiting after failures.", {"": float(backlog.in_backoff)})
        metric("users_parked", "Users parked by an operator or quarantined.", {"": float(backlog.parked)})
        fresh = backlog.freshness
        metric(
            "oldest_sync_age_seconds",
            "Since the least recently synced user's last sync, backoff included (0: nobody synced yet).",
            {"": fresh.oldest_sync_age_s or 0.0},
        )
        metric(
            "max_staleness_seconds", "status.max_staleness: every user synced within this.", {"": fresh.max_staleness_s}
        )
        metric(
            "users_over_max_staleness", "Users whose last sync is older than max_staleness.", {"": float(fresh.over)}
        )
        metric("freshness_ok", "1 while every user is synced within max_staleness, else 0.", {"": float(fresh.holds)})
    return "\n".join(lines) + "\n"


def write(
    path: str, outcome: str, duration_s: float, users: dict[str, int], backlog: Backlog | None, concurrency_limit: int
) -> None:
    target = Path(path)
    content = render(outcome, duration_s, users, backlog, concurrency_limit, time.time())
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
