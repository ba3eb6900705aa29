"""What an answer from the backend means (emailsync.sync.answers): its kind, whether it is permanent, whether it says
the backend is overrun or asks everyone to wait, and its Retry-After. Pure rules: no backend, no database."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailsync.model import Kind
from emailsync.sync.answers import NOT_PERMANENT, cooldown, given_up, is_permanent, kind_of, overloaded, retry_after


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, Kind.SYNCED),
        (204, Kind.SYNCED),
        (301, Kind.ENDPOINT),
        (404, Kind.ENDPOINT),
        (405, Kind.ENDPOINT),
        (401, Kind.AUTH),
        (403, Kind.AUTH),
        (409, None),
        (429, None),
        (503, None),
        (500, Kind.SERVER_ERROR),
        (422, Kind.USER_ERROR),
    ],
)
def test_one_rule_says_what_each_status_means(status: int, kind: Kind | None) -> None:
    assert kind_of(status) is kind


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (410, True), (422, True), (451, True), (None, False), (500, False), (503, False)]
    + [(status, False) for status in sorted(NOT_PERMANENT)],
)
def test_by_default_a_4xx_that_is_not_about_the_configuration_or_a_retry_is_permanent(
    status: int | None, permanent: bool
) -> None:
    assert is_permanent(status, ()) is permanent


def test_listed_statuses_replace_the_default_rule() -> None:
    assert [is_permanent(status, (410, 500)) for status in (410, 500, 422)] == [True, True, False]


def test_a_transient_failure_without_an_answer_is_the_transports_once_its_retries_are_spent() -> None:
    assert given_up(None) is Kind.TRANSPORT


@pytest.mark.parametrize("status", [409, 429, 502, 503, 504])
def test_a_transient_status_is_the_backends_failure_once_its_retries_are_spent(status: int) -> None:
    assert given_up(status) is Kind.SERVER_ERROR


def test_no_answer_in_time_says_the_backend_is_overrun() -> None:
    assert overloaded(None, None)


@pytest.mark.parametrize(("status", "overrun"), [(429, True), (503, True), (504, True), (409, False), (502, False)])
def test_only_429_503_and_504_among_the_transient_statuses_say_the_backend_is_overrun(
    status: int, overrun: bool
) -> None:
    assert overloaded(kind_of(status), status) is overrun


@pytest.mark.parametrize("status", [200, 500, 422, 404])
def test_an_answer_that_is_not_transient_never_says_the_backend_is_overrun(status: int) -> None:
    assert not overloaded(kind_of(status), status)


def test_an_answer_cut_short_after_its_status_says_the_backend_is_overrun_only_if_its_status_does() -> None:
    assert [overloaded(None, status) for status in (200, 503)] == [False, True]


@pytest.mark.parametrize("status", [429, 503])
def test_a_429_or_503_with_retry_after_asks_everyone_to_wait_that_long(status: int) -> None:
    assert cooldown(status, 7.0) == 7.0


@pytest.mark.parametrize("status", [409, 502, 504, None])
def test_other_transient_failures_ask_nobody_else_to_wait_even_with_retry_after(status: int | None) -> None:
    assert cooldown(status, 7.0) is None


def test_a_429_without_retry_after_asks_nobody_else_to_wait() -> None:
    assert cooldown(429, None) is None


@given(
    st.text(max_size=80)
    | st.from_regex(r"[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{1,14} [0-9:]{8} [A-Z+-][A-Z0-9]{2,4}")
)
def test_any_retry_after_is_a_wait_of_zero_or_more_seconds_or_absent(value: str) -> None:
    wait = retry_after(value)

    assert wait is None or wait >= 0


@pytest.mark.parametrize(
    ("value", "wait"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("\u00b2", None),  # a superscript two: str.isdigit() says yes, HTTP says no
        ("\u0663", None),  # an Arabic-Indic three, which float() reads as 3
        ("9" * 5000, math.inf),  # longer than any cap: the user fails for this run, without waiting
        ("Wed, 21 Oct 99999999999 07:28:00 GMT", None),  # past datetime's range
        ("Wed, 21 Oct 10000 07:28:00 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
    ],
)
def test_retry_after_is_ascii_seconds_or_a_date_a_clock_can_hold(value: str, wait: float | None) -> None:
    assert retry_after(value) == wait
