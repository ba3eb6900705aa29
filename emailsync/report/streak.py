"""Failure streaks: one alert when runs start failing, nothing while they go on failing, one "resolved" when a run
succeeds again.

A streak is the failed runs since the last successful one. Its alert is due at once when a run failed on the
configuration (exit 78: waiting will not fix it), else once ``alert.after`` runs have failed or a failed run found
the freshness promise broken. Only a run that ended ok ends it; a run stopped by systemd, a pause or a drain neither
ends nor extends it (it says nothing of the backend).

Two processes record outcomes, each the ones only it can see:
- the run, at its end: its own outcome and error, and whether the promise still holds (it can ask the database);
- the OnFailure handler (`email-sync alert`), started by systemd after every failed run: the failures that the run
  could not record (a watchdog kill, SIGKILL, RuntimeMaxSec, a crash or a configuration error before the cycle).
The handler sends the alert (it reads the journal and sees how systemd ended the run); only the run can send the
"resolved", as nothing starts the handler after a success.

The state is a small JSON file in the unit's state directory ($STATE_DIRECTORY), not in the database: the
commonest streak is a database outage. Readers and writers hold an exclusive lock on a file beside it from reading
to writing, and a write is a temporary file renamed over the old one, so no process sees half a state or loses
another's update. The rules are pure functions of the state and an outcome; the file is the small class at the end.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

FILE = "failure-streak.json"
LOCK = "failure-streak.lock"
FORMAT = 1


class Kind(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    STOPPED = "stopped"  # by systemd (SIGTERM), a pause or a drain: says nothing about the backend or the database


@dataclass(frozen=True)
class Outcome:
    """How one run ended, as the process recording it knows it."""

    kind: Kind
    at: datetime
    invocation: str | None = None  # systemd's invocation id of the run
    error: str = ""  # a failure's one line
    configuration: bool = False  # exit 78: retrying will not help
    stale: bool = False  # the run found the freshness promise broken


@dataclass(frozen=True)
class Streak:
    """The failed runs since the last success."""

    since: datetime  # when its first failed run ended
    last: datetime  # when its latest failed run ended
    runs: int
    first_error: str
    last_error: str
    configuration: bool = False  # one of its runs failed on the configuration
    stale: bool = False  # one of its runs found the freshness promise broken
    alerted_at: datetime | None = None  # when its alert was delivered

    def alert_due(self, after: int) -> bool:
        return self.alerted_at is None and (self.configuration or self.stale or self.runs >= after)


@dataclass(frozen=True)
class State:
    streak: Streak | None = None
    recorded: str | None = None  # the invocation of the streak's latest failed run: recorded once, whoever is first


@dataclass(frozen=True)
class Alert:
    streak: Streak


@dataclass(frozen=True)
class Resolved:
    streak: Streak
    at: datetime

    @property
    def duration_s(self) -> float:
        return (self.at - self.streak.since).total_seconds()


def after_run(state: State, outcome: Outcome) -> tuple[State, Resolved | None]:
    """A run's own outcome: a success ends the streak, with a "resolved" to send if the streak had its alert; a
    failure starts or extends it (its alert, when due, is the handler's: systemd starts it after every failed run);
    a stopped run changes nothing."""
    if outcome.kind is Kind.SUCCESS:
        ended = state.streak
        return State(), Resolved(ended, outcome.at) if ended is not None and ended.alerted_at is not None else None
    if outcome.kind is Kind.FAILURE:
        return State(_extended(state.streak, outcome), outcome.invocation), None
    return state, None


def after_failed_unit(state: State, failure: Outcome, after: int) -> tuple[State, Alert | None]:
    """The OnFailure handler's step for a failed run: record ``failure`` (what systemd says of it) unless the run
    recorded its own failure, then the alert if the streak calls for one and has not had it."""
    if not (failure.invocation and state.recorded == failure.invocation):
        state = State(_extended(state.streak, failure), failure.invocation)
    streak = state.streak
    return state, Alert(streak) if streak is not None and streak.alert_due(after) else None


def alerted(state: State, at: datetime) -> State:
    """The state once the streak's alert was delivered: no other until it ends."""
    return replace(state, streak=replace(state.streak, alerted_at=at)) if state.streak else state


def _extended(streak: Streak | None, failure: Outcome) -> Streak:
    if streak is None:
        return Streak(failure.at, failure.at, 1, failure.error, failure.error, failure.configuration, failure.stale)
    return replace(
        streak,
        last=failure.at,
        runs=streak.runs + 1,
        last_error=failure.error,
        configuration=streak.configuration or failure.configuration,
        stale=streak.stale or failure.stale,
    )


# -- the file ------------------------------------------------------------------------------------------------------


class Unreadable(Exception):
    """The state file is there but is not a state this version wrote."""


def directory(env: Mapping[str, str]) -> Path | None:
    """The unit's state directory, as systemd announces it (StateDirectory=); None outside such a unit."""
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else None


def as_json(state: State) -> dict[str, Any]:
    streak = state.streak
    return {
        "format": FORMAT,
        "recorded": state.recorded,
        "streak": None if streak is None else streak_json(streak),
    }


def streak_json(streak: Streak) -> dict[str, Any]:
    return {
        "runs": streak.runs,
        "since": streak.since.isoformat(),
        "last_failure": streak.last.isoformat(),
        "first_error": streak.first_error,
        "last_error": streak.last_error,
        "configuration": streak.configuration,
        "freshness_broken": streak.stale,
        "alerted_at": streak.alerted_at.isoformat() if streak.alerted_at else None,
    }


def from_json(data: Any) -> State:
    """A state from its JSON; Unreadable when it is not one this version writes."""
    try:
        if data["format"] != FORMAT:
            raise Unreadable(f"format {data['format']!r}, not {FORMAT}")
        s = data["streak"]
        streak = None
        if s is not None:
            alerted_at = s["alerted_at"]
            streak = Streak(
                datetime.fromisoformat(s["since"]),
                datetime.fromisoformat(s["last_failure"]),
                int(s["runs"]),
                str(s["first_error"]),
                str(s["last_error"]),
                bool(s["configuration"]),
                bool(s["freshness_broken"]),
                datetime.fromisoformat(alerted_at) if alerted_at else None,
            )
        recorded = data["recorded"]
        return State(streak, str(recorded) if recorded else None)
    except (KeyError, TypeError, ValueError) as error:
        raise Unreadable(f"{type(error).__name__}: {error}") from None


class StreakFile:
    """The state in ``directory``; read and write it only inside ``locked()``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self.lock_path = directory / LOCK

    @contextlib.contextmanager
    def locked(self) -> Iterator[StreakFile]:
        """Held from reading to writing, so that two processes never interleave their updates."""
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(descriptor)  # releases the lock

    def read(self) -> State:
        """The state; an empty one when there is no file. Unreadable for a file that holds no state."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        try:
            return from_json(json.loads(data))
        except ValueError as error:  # UnicodeDecodeError included
            raise Unreadable(f"not JSON: {error}") from None

    def write(self, state: State) -> None:
        """Written whole or not at all: a temporary file, flushed to disk, renamed over the old one."""
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(as_json(state), out, indent=1)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        parent = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(parent)  # the rename itself survives a power cut
        finally:
            os.close(parent)
