"""The values that pass between the database, the HTTP client and the cycle. Plain data in a module of its own, so
that the HTTP layer and the database layer never import each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Claim:
    """A user this run holds a lease on."""

    user_id: Any  # the app's id as JSON sends it: an int or a str (a UUID as its text)
    key: str  # the id as text: our state table's key
    email: str
    failures: int  # consecutive failures before this attempt


@dataclass(frozen=True)
class Candidate:
    """A due user as a page lists it: the id to look it up by, and the id as text, our state table's key."""

    user_id: Any
    key: str


@dataclass(frozen=True)
class Result:
    claim: Claim
    ok: bool
    duration_ms: int
    error: str | None = None


@dataclass
class RunCounts:
    due: int = 0
    synced: int = 0
    failed: int = 0
    skipped: int = 0


def json_id(value: Any) -> Any:
    """The id as the backend gets it in JSON: integers and strings as they are, anything else (UUID) as text."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else str(value)
