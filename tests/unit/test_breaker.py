"""The circuit breaker (streams.flow.breaker) on a fake clock, and the inference timeout on models
that provably never answer until the test releases them: no sleeping, no racing the code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.protocol import Runner
from streams.errors import ModelError, ModelTimeout, ModelUnavailableError
from streams.flow.breaker import BreakerPolicy, Circuit, CircuitBreaker, TimedRunner, timed
from tests.fakes import SumRunner

# The timeout can be tiny: the runners below never answer until released, so it cannot be a race.
TINY_S = 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown_s: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(BreakerPolicy(failures=failures, cooldown_s=cooldown_s), clock), clock


def test_it_opens_after_n_failed_batches_in_a_row_and_then_refuses_the_model():
    b, _ = breaker(failures=3)
    assert b.state is Circuit.CLOSED and b.allows()
    assert b.failed("boom 1") is False
    assert b.failed("boom 2") is False
    assert b.state is Circuit.CLOSED and b.allows(), "under N failures the model is still called"
    assert b.failed("boom 3") is True, "the Nth failure in a row opens it"
    assert b.state is Circuit.OPEN and not b.allows()
    assert (b.trips, b.reason) == (1, "boom 3")


def test_a_success_in_between_resets_the_count():
    b, _ = breaker(failures=3)
    b.failed("a")
    b.failed("b")
    assert b.succeeded() is False, "a success while closed closes nothing"
    assert b.failed("c") is False
    assert b.failed("d") is False
    assert b.state is Circuit.CLOSED, "two, a success, two: never three in a row"
    assert b.failed("e") is True
    assert b.state is Circuit.OPEN


def test_it_half_opens_when_the_cooldown_has_passed_not_before():
    b, clock = breaker(failures=1, cooldown_s=10.0)
    b.failed("down")
    clock.now += 9.999
    assert b.state is Circuit.OPEN and not b.allows()
    clock.now += 0.001
    assert b.state is Circuit.HALF_OPEN and b.allows(), "the next batch is the probe"


def test_a_probe_that_succeeds_closes_it_and_the_count_starts_again():
    b, clock = breaker(failures=2, cooldown_s=5.0)
    b.failed("x")
    b.failed("y")
    clock.now += 5.0
    assert b.allows()
    assert b.succeeded() is True, "the success closed an open breaker"
    assert b.state is Circuit.CLOSED
    assert b.failed("z") is False, "one failure after closing is not N in a row"
    assert b.state is Circuit.CLOSED


def test_a_probe_that_fails_reopens_it_for_a_whole_new_cooldown():
    b, clock = breaker(failures=3, cooldown_s=5.0)
    for reason in ("a", "b", "c"):
        b.failed(reason)
    clock.now += 5.0
    assert b.state is Circuit.HALF_OPEN
    assert b.failed("probe failed") is True, "one failed probe is enough: not N more"
    assert b.state is Circuit.OPEN and not b.allows()
    assert (b.trips, b.reason) == (2, "probe failed")
    clock.now += 4.999
    assert b.state is Circuit.OPEN, "the cooldown counts from the failed probe"
    clock.now += 0.001
    assert b.state is Circuit.HALF_OPEN


class NeverAnswers(SumRunner):
    """Awaits an event the test never sets: it provably does not answer within any timeout."""

    name = "stuck"
    version = "3"

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = 0
        self.cancelled = 0

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.entered += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().predict(inputs)


def rows(n: int) -> list[np.ndarray]:
    return [np.ones((n, 2), dtype=np.float32)]


async def test_a_model_that_never_answers_raises_a_retriable_model_timeout():
    runner = NeverAnswers()
    with pytest.raises(ModelTimeout) as raised:
        await TimedRunner(runner, TINY_S).predict(rows(7))
    error = raised.value
    assert isinstance(error, ModelUnavailableError) and isinstance(error, ModelError)
    assert error.retriable, "no input is at fault: the batch is retried, never dead-lettered"
    assert "stuck v3" in str(error) and "batch of 7" in str(error) and "10 ms" in str(error)
    assert runner.cancelled == 1, "the abandoned call is cancelled, not left waiting on the loop"


class BlockingThreadRunner:
    """Scores on its own thread, like a real runner, and blocks there until released."""

    name = "gpu"
    version = "1"

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1)
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def _predict_now(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.started.set()
        self.release.wait()
        self.finished.set()
        return inputs[0].sum(axis=1)

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._predict_now, inputs)

    async def aclose(self) -> None:
        self.executor.shutdown(wait=True)


async def test_a_model_thread_that_blocks_is_abandoned_at_the_timeout_and_its_late_answer_thrown_away():
    runner = BlockingThreadRunner()
    try:
        with pytest.raises(ModelTimeout):
            await TimedRunner(runner, TINY_S).predict(rows(3))
        assert runner.started.is_set() and not runner.finished.is_set(), "the thread is still stuck"
    finally:
        runner.release.set()
        await runner.aclose()
    assert runner.finished.is_set(), "released, the thread ends; nobody waits for its answer"


async def test_an_answer_in_time_passes_through_and_the_runner_is_still_a_runner():
    inner = SumRunner()
    wrapped = TimedRunner(inner, 60.0)
    assert isinstance(wrapped, Runner)
    assert (wrapped.name, wrapped.version) == ("sum", "1")
    assert (await wrapped.predict(rows(4))).tolist() == [2.0] * 4
    assert inner.batches == [4]


async def test_the_models_own_error_is_not_turned_into_a_timeout():
    class Raising(SumRunner):
        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        await TimedRunner(Raising(), 60.0).predict(rows(2))


async def test_closing_the_timed_runner_closes_the_model():
    closed = []

    class Closing(SumRunner):
        async def aclose(self) -> None:
            closed.append(True)

    await TimedRunner(Closing(), 1.0).aclose()
    assert closed == [True]


def test_no_timeout_leaves_the_runner_as_it_is():
    runner = SumRunner()
    assert timed(runner, None) is runner
    wrapped = timed(runner, 0.5)
    assert isinstance(wrapped, TimedRunner) and wrapped.inner is runner and wrapped.timeout_s == 0.5
