"""The backend client's rules: the Idempotency-Key each piece of work is sent with."""

from __future__ import annotations

import json
import uuid

from emailsync.model import Claim
from emailsync.sync.backend import idempotency_key


def claim(user: int = 1, last_sync: str = "1796531533.660721", failures: int = 0, results: int = 0) -> Claim:
    return Claim(user, str(user), f"u{user}@example.com", failures, last_sync, results)


def key(of: Claim, max_emails: int = 50) -> str:
    return idempotency_key(of, json.dumps({"user_id": of.user_id, "email": of.email, "max_emails": max_emails}))


def test_the_same_work_gets_the_same_idempotency_key_whichever_run_sends_it() -> None:
    assert key(claim()) == key(claim())


def test_a_new_window_gets_a_new_idempotency_key() -> None:
    assert key(claim(last_sync="1796531533.660721", results=1)) != key(claim(last_sync="1796535140.002", results=1))


def test_a_retry_after_a_recorded_failure_gets_a_new_idempotency_key() -> None:
    assert key(claim(failures=0, results=3)) != key(claim(failures=1, results=4))


def test_a_reset_never_brings_back_an_earlier_idempotency_key() -> None:
    """A reset (or unpark) puts failures back to 0 in the same window: a backend replaying the answers it stored
    for the earlier keys would replay the failures the reset was meant to retry."""
    earlier = {key(claim(failures=n, results=n)) for n in range(3)}  # three failures in a row, then `reset`

    assert key(claim(failures=0, results=3)) not in earlier


def test_each_user_and_each_request_gets_its_own_idempotency_key() -> None:
    keys = {key(claim(user=1)), key(claim(user=2)), key(claim(user=1), max_emails=7), key(claim(last_sync=""))}

    assert len(keys) == 4


def test_the_idempotency_key_is_a_uuid_that_shows_nothing_of_the_user() -> None:
    given = key(claim(user=424242))

    assert uuid.UUID(given).version == 5 and str(uuid.UUID(given)) == given
    assert "424242" not in given and "example" not in given


def test_the_idempotency_key_of_a_piece_of_work_does_not_change_from_one_release_to_the_next() -> None:
    """A run killed before an upgrade and the first run after it must send the same key for the same work:
    changing how the key is derived is a change backend authors must hear about (docs/operations.md)."""
    assert key(claim()) == "528c9726-9c1d-525d-894a-d47a2475dc9a"
