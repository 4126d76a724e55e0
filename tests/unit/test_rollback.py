"""A canary's automatic roll-back (streams.flow.rollback): its limits on hand-fed stats, and
through the roles and a real Pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streams.errors import ModelUnavailableError
from streams.flow.breaker import BreakerPolicy
from streams.flow.canary import Canary, key_share
from streams.flow.model_stats import ModelStats
from streams.flow.roles import Roles
from streams.flow.rollback import RollbackLimits, broken_limit
from tests.fakes import SumRunner
from tests.unit.test_roles import PLAIN_FIELDS, TINY_S, Champion, Hangs, events, key_of, make_pipeline

ONE = np.ones(4, dtype=np.float32)


def stats(batches: int = 0, errors: int = 0, timeouts: int = 0, seconds: float = 0.0002) -> ModelStats:
    s = ModelStats("canary", "cand", "2")
    for _ in range(batches):
        s.scored(ONE, seconds)
    for _ in range(errors):
        s.failed(timed_out=False)
    for _ in range(timeouts):
        s.failed(timed_out=True)
    return s


def test_nothing_is_judged_before_min_batches():
    limits = RollbackLimits(max_error_rate=0.1, max_timeout_rate=0.1, max_p99_s=0.001, min_batches=10)
    assert broken_limit(stats(errors=9), limits) is None, "nine failures of nine: not yet evidence"
    assert broken_limit(stats(batches=5, timeouts=4), limits) is None
    assert "max_error_rate" in (broken_limit(stats(errors=10), limits) or "")


def test_the_error_rate_breaks_only_when_over_its_limit():
    limits = RollbackLimits(max_error_rate=0.2, min_batches=10)
    assert broken_limit(stats(batches=8, errors=2), limits) is None, "20% is not over 20%"
    broken = broken_limit(stats(batches=7, errors=3), limits)
    assert broken is not None and "failed 3 of 10 batches (30.0%)" in broken and "20.0%" in broken


def test_the_timeout_rate_is_judged_apart_from_errors():
    limits = RollbackLimits(max_error_rate=0.5, max_timeout_rate=0.1, min_batches=10)
    broken = broken_limit(stats(batches=8, timeouts=2), limits)
    assert broken is not None and "timed out on 2 of 10" in broken
    assert broken_limit(stats(batches=8, errors=2), limits) is None, "errors count against the error rate only"


def test_the_p99_is_the_bucket_holding_the_99th_percentile_batch():
    limits = RollbackLimits(max_p99_s=0.01, min_batches=20)
    fast_but_one = stats(batches=99, seconds=0.0004)
    fast_but_one.scored(ONE, 0.4)  # one slow batch in a hundred is the 100th percentile, not the 99th
    assert fast_but_one.p99_seconds() == 0.0005
    assert broken_limit(fast_but_one, limits) is None
    fast_but_one.scored(ONE, 0.4)  # two in 101: now the 99th percentile is slow
    assert fast_but_one.p99_seconds() == 0.5
    broken = broken_limit(fast_but_one, limits)
    assert broken is not None and "500.0 ms" in broken and "max_p99_ms of 10.0" in broken


def test_a_p99_limit_above_the_histograms_last_bound_is_judged_by_the_slowest_batch_seen():
    """The inference histogram ends at 1 s; limits go up to an hour. Past its last bound the p99's
    upper bound is the slowest batch seen, not infinity, which would break any limit."""
    limits = RollbackLimits(max_p99_s=2.0, min_batches=20)
    slow_but_within = stats(batches=30, seconds=1.5)
    assert slow_but_within.p99_seconds() == 1.5
    assert broken_limit(slow_but_within, limits) is None
    too_slow = stats(batches=30, seconds=1.5)
    too_slow.scored(ONE, 9.0)
    assert too_slow.p99_seconds() == 9.0
    broken = broken_limit(too_slow, limits)
    assert broken is not None and "9000.0 ms" in broken


def test_the_p99_needs_min_batches_that_answered():
    limits = RollbackLimits(max_p99_s=0.001, min_batches=20)
    assert broken_limit(stats(batches=19, errors=1, seconds=0.2), limits) is None
    assert broken_limit(stats(batches=20, seconds=0.2), limits) is not None


def test_unset_limits_are_never_broken():
    assert broken_limit(stats(errors=50, timeouts=50), RollbackLimits(min_batches=1)) is None
    assert stats().p99_seconds() is None


class FailingCandidate(SumRunner):
    name = "cand"
    version = "2"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        raise ModelUnavailableError("canary device lost")


async def test_a_canary_failing_again_and_again_is_rolled_back_once_and_the_champion_takes_all_keys():
    candidate = FailingCandidate()
    rolled: list[str] = []
    roles = Roles(
        Champion(),
        canary=Canary(candidate, 0.5),
        rollback=RollbackLimits(max_error_rate=0.5, min_batches=3),
        on_rollback=rolled.append,
    )
    pipeline, sink = make_pipeline(roles)
    for b in range(6):
        await pipeline.process(events(10, start=10 * b, key=lambda i: key_of(i % 10)))
    assert candidate.calls == 3, "tried until min_batches, then never again"
    assert roles.canary is None
    assert roles.rolled_back is not None and "failed 3 of 3 batches" in roles.rolled_back
    assert rolled == [roles.rolled_back], "on_rollback called once, with the reason"
    out = sink.decoded("out")
    assert sorted(o["id"] for o in out) == list(range(60)), "no event lost while the canary failed"
    assert all(set(o) == PLAIN_FIELDS and o["model"] == "champ" for o in out)
    assert any(key_share(key_of(i)) < 0.5 for i in range(10)), "the canary had keys to lose"


async def test_a_canary_timing_out_is_rolled_back_by_its_timeout_rate():
    class HungCandidate(Hangs):
        name, version = "cand", "2"

    candidate = HungCandidate()
    roles = Roles(
        Champion(),
        canary=Canary(candidate, 0.5),
        policy=BreakerPolicy(timeout_s=TINY_S),
        rollback=RollbackLimits(max_timeout_rate=0.5, min_batches=2),
    )
    pipeline, sink = make_pipeline(roles)
    for b in range(4):
        await pipeline.process(events(10, start=10 * b))
    assert candidate.entered == 2
    assert roles.canary is None and roles.rolled_back is not None and "timed out on 2 of 2" in roles.rolled_back
    assert len(sink.decoded("out")) == 40
    candidate.release.set()


async def test_a_healthy_canary_is_not_rolled_back():
    class Candidate(SumRunner):
        name, version = "cand", "2"

    roles = Roles(
        Champion(), canary=Canary(Candidate(), 0.5), rollback=RollbackLimits(max_error_rate=0.0, min_batches=2)
    )
    pipeline, sink = make_pipeline(roles)
    for b in range(4):
        await pipeline.process(events(10, start=10 * b))
    assert roles.canary is not None and roles.rolled_back is None
    assert roles.book.of("canary", "cand", "2").batches == 4
    assert {o["model"] for o in sink.decoded("out")} == {"cand", "champ"}
