"""bench.latency's drain sizing, which needs no broker: a drain's rate from its outputs'
append times, and the next backlog from a drain too short to count."""

from __future__ import annotations

import math

from bench.latency import DRAIN_MARGIN, drain_rate, next_backlog


def test_the_drain_rate_is_outputs_over_first_to_last_append_time() -> None:
    # 1,000 outputs appended 10 ms apart from t = 5 s (start-up, before it, is not in the times).
    rate, seconds = drain_rate(5_000 + i * 10 for i in range(1_000))
    assert seconds == 9.99
    assert rate == 1_000 / 9.99


def test_a_drain_with_no_outputs_has_no_rate_and_one_within_a_millisecond_an_unbounded_one() -> None:
    assert drain_rate([]) == (0.0, 0.0)
    assert drain_rate([7, 7, 7]) == (math.inf, 0.0)


def test_a_drain_that_lasted_long_enough_or_hit_the_cap_is_the_measurement() -> None:
    assert next_backlog(20_000, 1_500.0, 13.3, seconds=10, cap=1_000_000) is None
    assert next_backlog(1_000_000, 200_000.0, 5.0, seconds=10, cap=1_000_000) is None


def test_a_short_drain_is_followed_by_one_sized_to_its_rate_with_the_margin() -> None:
    assert next_backlog(20_000, 40_000.0, 0.5, seconds=10, cap=1_000_000) == int(40_000 * 10 * DRAIN_MARGIN)


def test_the_next_backlog_at_least_doubles_and_stays_under_the_cap() -> None:
    # A first drain's rate is low (the batcher is still adapting): it still grows.
    assert next_backlog(20_000, 100.0, 2.0, seconds=10, cap=1_000_000) == 40_000
    assert next_backlog(20_000, 500_000.0, 0.04, seconds=10, cap=1_000_000) == 1_000_000
    assert next_backlog(20_000, math.inf, 0.0, seconds=10, cap=1_000_000) == 1_000_000
