"""The models that serve a pipeline's outputs, by role: champion, canary and fallback.

Each batch's events are split once, by key (``streams.flow.canary``): the canary's share of
keys goes to the canary, the rest to the champion. Whatever a primary model cannot score goes
to the next one, so every event gets exactly one primary output:

- the canary fails a whole batch (an error, or its timeout): its events go to the champion,
  and the failure counts toward the canary's roll-back (``streams.flow.rollback``);
- the champion fails a whole batch: with a fallback configured, the fallback scores it and
  the champion's circuit breaker counts the failure; once open, the champion is not called
  until its cool-down ends. Without a fallback, the error goes to the caller, which retries
  the batch with back-off as before (a hung model now raises ``ModelTimeout`` instead of
  waiting forever).

A model that raises on some rows only is still isolated row by row (``IsolatingScorer``): those
rows are dead letters, not a failed batch. Shadows are not here: they never serve
(``streams.flow.shadow``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from models.protocol import Runner
from streams.codecs.codec import Decoded
from streams.errors import ModelError, ModelTimeout, ModelUnavailableError
from streams.flow.breaker import BreakerPolicy, Circuit, CircuitBreaker, timed
from streams.flow.canary import Canary
from streams.flow.isolation import Isolated, IsolatingScorer, describe
from streams.flow.model_stats import ModelBook
from streams.flow.rollback import RollbackLimits, broken_limit
from streams.records import SourceRecord

log = logging.getLogger(__name__)

# The most of a fallback's reason each of its outputs carries.
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Scoring:
    """Some of a batch's events (``decoded``, without the batch's rejects) and what a model made of them."""

    decoded: Decoded
    isolated: Isolated
    name: str
    version: str
    role: str  # "champion", "canary" or "fallback"
    # Why the fallback scored these events (the champion's error, or its open breaker).
    reason: str | None = None
    seconds: float = 0.0

    def output_fields(self) -> dict[str, object] | None:
        """What each output says beyond its model and version when the champion did not score it."""
        if self.role == "champion":
            return None  # the common case keeps the output as it always was, field for field
        if self.role == "fallback":
            # Bounded: it is in every output while the circuit is open, and may echo the model's error.
            reason = self.reason or ""
            if len(reason) > MAX_REASON_CHARS:
                reason = reason[: MAX_REASON_CHARS - 3] + "..."
            return {"role": "fallback", "fallback": True, "fallback_reason": reason}
        return {"role": self.role}


class ConstantRunner:
    """A fallback that answers ``value`` for every event: the decision a team takes when nothing scores."""

    def __init__(self, value: float) -> None:
        self.value = value

    @property
    def name(self) -> str:
        return "constant"

    @property
    def version(self) -> str:
        return repr(self.value)

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.full(int(inputs[0].shape[0]), self.value, dtype=np.float32)

    async def aclose(self) -> None:
        return None


class Roles:
    def __init__(
        self,
        champion: Runner,
        *,
        canary: Canary | None = None,
        fallback: Runner | None = None,
        policy: BreakerPolicy | None = None,
        rollback: RollbackLimits | None = None,
        book: ModelBook | None = None,
        pipeline: str = "",
        clock: Callable[[], float] = time.monotonic,
        on_rollback: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.breaker = CircuitBreaker(self.policy, clock)
        self.book = book or ModelBook()
        self.pipeline = pipeline
        self.rollback = rollback or RollbackLimits()
        self.on_rollback = on_rollback
        # Why the canary was rolled back, once it was (it scores nothing from then on).
        self.rolled_back: str | None = None
        self.fallback = fallback
        self._fallback = IsolatingScorer(fallback) if fallback is not None else None
        self.use_champion(champion)
        self.use_canary(canary)

    def use_champion(self, runner: Runner) -> None:
        """Serve ``runner`` from the next batch on (the caller holds the batches back meanwhile)."""
        self.champion = runner
        self._champion = IsolatingScorer(timed(runner, self.policy.timeout_s))
        self.breaker = CircuitBreaker(self.policy, self.breaker.clock)

    def use_canary(self, canary: Canary | None) -> None:
        self.canary = canary
        self._canary = None if canary is None else IsolatingScorer(timed(canary.runner, self.policy.timeout_s))
        self.rolled_back = None

    async def score(self, records: Sequence[SourceRecord], decoded: Decoded) -> list[Scoring]:
        """Each of ``decoded``'s events scored by exactly one primary model, in groups by model."""
        if not len(decoded):
            return []
        served = replace(decoded, rejects=[])
        if self.canary is None or self._canary is None:
            return [await self._by_champion(served)]
        chosen = self.canary.selects(records, decoded.rows, decoded.ids)
        if not chosen.any():
            return [await self._by_champion(served)]
        groups = [] if chosen.all() else [await self._by_champion(served.narrowed(~chosen))]
        canary_part = served.narrowed(chosen)
        by_canary = await self._by_canary(canary_part)
        return [*groups, by_canary if by_canary is not None else await self._by_champion(canary_part)]

    async def _by_canary(self, part: Decoded) -> Scoring | None:
        assert self.canary is not None and self._canary is not None
        runner = self.canary.runner
        stats = self.book.of("canary", runner.name, runner.version)
        started = time.perf_counter()
        try:
            isolated = await self._canary.predict(part.inputs)
        except ModelError as exc:
            if not exc.retriable:
                raise
            stats.failed(isinstance(exc, ModelTimeout))
            log.warning("pipeline %s: canary failed a batch, the champion scores it: %s", self.pipeline, exc)
            self._check_canary()
            return None
        seconds = time.perf_counter() - started
        stats.scored(isolated.predictions, seconds)
        self._check_canary()
        return Scoring(part, isolated, runner.name, runner.version, "canary", seconds=seconds)

    def _check_canary(self) -> None:
        assert self.canary is not None
        runner = self.canary.runner
        broken = broken_limit(self.book.of("canary", runner.name, runner.version), self.rollback)
        if broken is None:
            return
        self.canary, self._canary, self.rolled_back = None, None, broken
        log.error(
            "pipeline %s: CANARY ROLLED BACK: model %s v%s %s; the champion scores all keys again",
            self.pipeline,
            runner.name,
            runner.version,
            broken,
        )
        if self.on_rollback is not None:
            self.on_rollback(broken)

    async def _by_champion(self, part: Decoded) -> Scoring:
        runner = self.champion
        stats = self.book.of("champion", runner.name, runner.version)
        if self._fallback is not None and not self.breaker.allows():
            return await self._by_fallback(part, f"the champion's circuit is open ({self.breaker.reason})")
        probing = self.breaker.state is Circuit.HALF_OPEN
        started = time.perf_counter()
        try:
            isolated = await self._champion.predict(part.inputs)
        except ModelError as exc:
            if not exc.retriable:
                raise
            stats.failed(isinstance(exc, ModelTimeout))
            if self._fallback is None:
                raise  # no fallback: the caller retries the batch with back-off, as without a breaker
            if self.breaker.failed(str(exc)):
                log.error(
                    "pipeline %s: CIRCUIT OPEN for model %s v%s after %s; the fallback %s v%s scores for "
                    "the next %.1fs: %s",
                    self.pipeline,
                    runner.name,
                    runner.version,
                    "a failed probe" if probing else f"{self.policy.failures} failed batch(es) in a row",
                    self.fallback.name if self.fallback else "?",
                    self.fallback.version if self.fallback else "?",
                    self.policy.cooldown_s,
                    exc,
                )
            return await self._by_fallback(part, str(exc))
        seconds = time.perf_counter() - started
        stats.scored(isolated.predictions, seconds)
        if self.breaker.succeeded():
            log.warning(
                "pipeline %s: circuit closed: model %s v%s scores again", self.pipeline, runner.name, runner.version
            )
        return Scoring(part, isolated, runner.name, runner.version, "champion", seconds=seconds)

    async def _by_fallback(self, part: Decoded, reason: str) -> Scoring:
        assert self.fallback is not None and self._fallback is not None
        started = time.perf_counter()
        try:
            isolated = await self._fallback.predict(part.inputs)
        except Exception as exc:
            raise ModelUnavailableError(
                f"the champion cannot score ({reason}) and neither can the fallback "
                f"{self.fallback.name} v{self.fallback.version} ({describe(exc)})"
            ) from exc
        seconds = time.perf_counter() - started
        self.book.of("fallback", self.fallback.name, self.fallback.version).scored(isolated.predictions, seconds)
        return Scoring(part, isolated, self.fallback.name, self.fallback.version, "fallback", reason, seconds)

    async def aclose(self) -> None:
        for runner in (self.champion, self.canary.runner if self.canary else None, self.fallback):
            if runner is not None:
                await runner.aclose()
