"""A circuit breaker for a model, and the inference timeout that feeds it.

A model that fails, or hangs, must not stop decisions. The breaker counts consecutive
failed batches (an error on the whole batch, or no answer within the timeout):

    CLOSED ──(``failures`` in a row)──► OPEN ──(``cooldown_s`` later)──► HALF_OPEN
       ▲                                  ▲                                  │
       └─────────(the probe succeeds)─────┼──────────────────────────────────┤
                                          └────────(the probe fails)─────────┘

While it is open the model is not called at all (a hung model would only make each batch
wait for its timeout): the fallback scores. Half-open, the next batch is the probe: the model
scores it, and its success closes the breaker. Time comes from an injected clock, so the
states are tested without waiting.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.protocol import Runner
from streams.errors import ModelTimeout


class Circuit(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    # Consecutive failed batches that open the breaker.
    failures: int = 3
    # How long it stays open before the model is tried again.
    cooldown_s: float = 10.0
    # The most a batch may take on the model's thread; None: no timeout.
    timeout_s: float | None = None


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._state = Circuit.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        # Why it opened last (the model's error or timeout), for outputs and logs.
        self.reason = ""
        self.trips = 0

    @property
    def state(self) -> Circuit:
        if self._state is Circuit.OPEN and self.clock() - self._opened_at >= self.policy.cooldown_s:
            self._state = Circuit.HALF_OPEN
        return self._state

    def allows(self) -> bool:
        """May the model be called for the next batch (closed, or half-open: the probe)?"""
        return self.state is not Circuit.OPEN

    def succeeded(self) -> bool:
        """The model scored a batch; returns True when that closed an open breaker."""
        reopened = self._state is not Circuit.CLOSED
        self._state, self._failures = Circuit.CLOSED, 0
        return reopened

    def failed(self, reason: str) -> bool:
        """The model failed a batch; returns True when that opened the breaker."""
        self._failures += 1
        self.reason = reason
        if self._state is Circuit.HALF_OPEN or (
            self._state is Circuit.CLOSED and self._failures >= self.policy.failures
        ):
            self._state, self._opened_at = Circuit.OPEN, self.clock()
            self.trips += 1
            return True
        return False


class TimedRunner:
    """``runner`` with a deadline on every call: past ``timeout_s`` it raises ``ModelTimeout``.

    The model's thread cannot be interrupted; the call is abandoned and its batch, when the
    thread frees up, is computed and thrown away. That is why a breaker must stop calling a
    model that times out: each call would queue behind the stuck one.
    """

    def __init__(self, runner: Runner, timeout_s: float) -> None:
        self.inner = runner
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> str:
        return self.inner.version

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        try:
            return await asyncio.wait_for(self.inner.predict(inputs), self.timeout_s)
        except TimeoutError:
            raise ModelTimeout(
                f"model {self.inner.name} v{self.inner.version} did not answer a batch of "
                f"{int(inputs[0].shape[0])} within its {self.timeout_s * 1000:.0f} ms inference timeout"
            ) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


def timed(runner: Runner, timeout_s: float | None) -> Runner:
    return runner if timeout_s is None else TimedRunner(runner, timeout_s)
