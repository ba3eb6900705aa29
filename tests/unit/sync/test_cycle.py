"""The cycle's own rules: when the first answers condemn the configuration, and when answered results are written."""

from __future__ import annotations

import pytest

from emailsync.errors import EndpointError
from emailsync.model import Claim, Kind, Outcome, Result
from emailsync.sync.cycle import UNWRITTEN_FOR, Unwritten, Verdict
from tests.unit.sync.test_backend import claim


def outcome(user: int, kind: Kind, status: int | None) -> Outcome:
    return Outcome(Claim(user, str(user), f"u{user}@example.com", 0, "", 0), kind, status, 1, 5)


def test_three_404s_in_a_row_condemn_the_endpoint_naming_the_key() -> None:
    verdict = Verdict(3, "http://backend/sync")
    verdict.observe(outcome(1, Kind.ENDPOINT, 404))
    verdict.observe(outcome(2, Kind.ENDPOINT, 404))

    with pytest.raises(EndpointError, match=r"backend\.sync_path"):
        verdict.observe(outcome(3, Kind.ENDPOINT, 404))


def test_one_success_releases_the_held_answers_as_those_users_failures() -> None:
    verdict = Verdict(3, "http://backend/sync")

    assert verdict.observe(outcome(1, Kind.ENDPOINT, 404)) == []
    released = verdict.observe(outcome(2, Kind.SYNCED, 200))

    assert [o.claim.user_id for o in released] == [1, 2]
    assert verdict.observe(outcome(3, Kind.ENDPOINT, 404))[0].claim.user_id == 3


def test_401s_for_everyone_blame_the_token() -> None:
    verdict = Verdict(2, "http://backend/sync")
    verdict.observe(outcome(1, Kind.AUTH, 401))

    with pytest.raises(EndpointError, match=r"backend\.token_file"):
        verdict.observe(outcome(2, Kind.AUTH, 403))


def synced(user: int) -> Result:
    return Result(claim(user), True, 5)


def test_an_answered_result_waits_for_its_write_no_longer_than_unwritten_for() -> None:
    unwritten = Unwritten(at_most=64)
    unwritten.add(synced(1), now=100.0)
    unwritten.add(synced(2), now=100.15)

    assert unwritten.due_in(100.1) == pytest.approx(UNWRITTEN_FOR - 0.1)
    assert unwritten.due_in(100.0 + UNWRITTEN_FOR) == 0.0  # counted from the oldest result, not the newest


def test_at_most_results_waiting_are_written_at_once() -> None:
    unwritten = Unwritten(at_most=3)
    for user in (1, 2, 3):
        assert unwritten.due_in(100.0) > 0
        unwritten.add(synced(user), now=100.0)

    assert unwritten.due_in(100.0) == 0.0


def test_unused_leases_are_given_back_within_unwritten_for_and_do_not_count_as_results() -> None:
    unwritten = Unwritten(at_most=1)
    unwritten.add(claim(1), now=100.0)

    assert unwritten.due_in(100.0) == pytest.approx(UNWRITTEN_FOR)
    assert unwritten.due_in(100.0 + UNWRITTEN_FOR) == 0.0


def test_nothing_waiting_is_never_due_and_a_write_starts_the_clock_again() -> None:
    unwritten = Unwritten(at_most=64)
    assert unwritten.due_in(100.0) == float("inf")
    unwritten.add(synced(1), now=100.0)
    unwritten.add(claim(2), now=100.1)

    results, unused = unwritten.take()

    assert [r.claim.user_id for r in results] == [1] and [c.user_id for c in unused] == [2]
    assert unwritten.due_in(200.0) == float("inf")
    unwritten.add(synced(3), now=200.0)
    assert unwritten.due_in(200.0) == pytest.approx(UNWRITTEN_FOR)
