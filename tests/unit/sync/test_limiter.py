"""The adaptive limit (backend.concurrency = "auto") as a specification: answers in, limit out, no clock, no
threads, except for the gate's own behaviour at the end."""

from __future__ import annotations

import threading

from emailsync.sync.limiter import INITIAL, Fixed, Gate, Limiter

FLAT = 0.1  # seconds: the backend without a queue


def answer_a_round(limiter: Limiter, rtt: float, overloaded: bool = False) -> int:
    """Answers at the current limit, every call slot busy, until the limit moves (or long after a round would)."""
    start = limiter.limit
    for _ in range(10 * max(start, 100)):
        if limiter.on_sample(None if overloaded else rtt, start, overloaded) != start:
            break
    return limiter.limit


def limits_over(limiter: Limiter, rounds: int, rtt: float) -> list[int]:
    return [answer_a_round(limiter, rtt) for _ in range(rounds)]


def test_it_starts_at_a_few_calls() -> None:
    assert Limiter(128).limit == INITIAL == 8


def test_slow_start_doubles_the_limit_each_round_while_latency_stays_flat() -> None:
    assert limits_over(Limiter(1024), 4, FLAT) == [16, 32, 64, 128]


def test_an_overload_answer_in_slow_start_halves_the_limit_back_to_the_last_flat_one() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 3, FLAT)

    assert answer_a_round(limiter, FLAT, overloaded=True) == 32


def test_after_slow_start_the_limit_grows_by_one_per_flat_round() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 3, FLAT)
    answer_a_round(limiter, FLAT, overloaded=True)

    assert limits_over(limiter, 3, FLAT) == [33, 34, 35]


def test_an_overload_answer_after_slow_start_cuts_a_quarter() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 4, FLAT)
    answer_a_round(limiter, FLAT, overloaded=True)

    assert answer_a_round(limiter, FLAT, overloaded=True) == 48


def test_rising_latency_ends_slow_start_back_at_the_last_flat_limit() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 3, FLAT)

    assert answer_a_round(limiter, FLAT * 1.5) == 32


def test_one_noisy_round_does_not_end_slow_start() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 1, FLAT)
    for _ in range(16):  # one round at 16, slower
        limiter.on_sample(FLAT * 1.5, 16, False)

    assert limits_over(limiter, 2, FLAT) == [32, 64]


def test_rising_latency_after_slow_start_cuts_a_tenth() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 4, FLAT)
    answer_a_round(limiter, FLAT, overloaded=True)

    assert answer_a_round(limiter, FLAT * 1.5) == 57


def test_latency_within_the_tolerance_is_flat() -> None:
    limiter = Limiter(1024)

    assert limits_over(limiter, 2, FLAT * 1.05) == [16, 32]


def test_the_limit_never_exceeds_the_ceiling() -> None:
    limiter = Limiter(20)

    assert limits_over(limiter, 10, FLAT) == [16, 20, 20, 20, 20, 20, 20, 20, 20, 20]


def test_the_limit_never_falls_below_one() -> None:
    limiter = Limiter(1024)

    limits = [answer_a_round(limiter, FLAT, overloaded=True) for _ in range(10)]

    assert limits == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1]


def test_the_limit_recovers_once_the_overload_ends() -> None:
    limiter = Limiter(1024)
    for _ in range(10):
        answer_a_round(limiter, FLAT, overloaded=True)

    assert limits_over(limiter, 5, FLAT) == [2, 3, 4, 5, 6]


def test_a_limit_the_calls_never_reach_is_not_raised() -> None:
    limiter = Limiter(1024)

    for _ in range(1000):
        limiter.on_sample(FLAT, INITIAL // 2, False)

    assert limiter.limit == INITIAL


def test_answers_of_calls_sent_before_a_cut_do_not_cut_again() -> None:
    limiter = Limiter(1024)
    limits_over(limiter, 3, FLAT)
    answer_a_round(limiter, FLAT, overloaded=True)  # 64 in flight when it came: the 63 others were sent at 64

    limits = {limiter.on_sample(None, 64, True) for _ in range(63)}

    assert limits == {32}
    assert limiter.on_sample(None, 64, True) == 24


def test_failed_calls_say_nothing_about_latency() -> None:
    limiter = Limiter(1024)

    for _ in range(1000):
        limiter.on_sample(None, INITIAL, False)

    assert limiter.limit == INITIAL


def test_it_settles_below_the_knee_of_a_backend_whose_latency_climbs_past_it() -> None:
    """A backend flat up to 40 calls in flight, a quarter of its latency more for each call beyond."""
    limiter = Limiter(128)

    limits = [answer_a_round(limiter, FLAT * (1 + max(0, limiter.limit - 40) / 4)) for _ in range(200)]

    steady = limits[100:]
    assert min(steady) >= 36 and max(steady) <= 42


def test_the_gate_lets_no_more_calls_in_than_the_limit() -> None:
    gate = Gate(ceiling=3)
    stop = threading.Event()
    entered = [gate.enter(stop) for _ in range(3)]
    stop.set()

    assert entered == [True, True, True]
    assert gate.enter(stop) is False


def test_a_call_that_leaves_the_gate_lets_the_next_one_in() -> None:
    gate = Gate(ceiling=1)
    stop = threading.Event()
    gate.enter(stop)
    gate.leave(FLAT, overloaded=False)
    stop.set()

    assert gate.enter(stop) is True


def test_under_a_fixed_concurrency_claims_run_a_whole_batch_ahead() -> None:
    assert Fixed(32).ahead(100) == 100


def test_under_auto_claims_run_as_far_ahead_as_the_limit_and_no_further_than_a_batch() -> None:
    gate = Gate(1024)

    assert gate.ahead(100) == INITIAL
    gate.limiter.limit = 512
    assert gate.ahead(100) == 100
