"""A running pipeline's models changed between two batches: a new champion, the canary stopped,
shadows let go, in one step.

Taken under the dispatcher's lock, like ``Driver.swap_runner``: no batch is scored while the
roles change, so every batch (and every output, which names its model) is scored by the models
of one moment, never by the new champion beside a canary that was promoted away. The models
taken out of service are handed back for the caller to close once they are idle: a shadow may
still be scoring a batch it was offered, and ``Shadow.drain`` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from models.protocol import Runner
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline
from streams.flow.shadow import Shadow

log = logging.getLogger(__name__)

# How long a shadow taken out of service may take to score what it was offered (evidence, not decisions).
DRAIN_WITHIN_S = 5.0


@dataclass(frozen=True)
class RoleChange:
    # The new champion and the cost model its warm-up measured (the batcher plans with it).
    champion: tuple[Runner, CostModel] | None = None
    # Stop the canary: the champion scores all its keys from the next batch.
    stop_canary: bool = False
    # Why, when the canary is stopped because it was rolled back (not promoted).
    rollback_reason: str | None = None
    drop_shadows: tuple[Shadow, ...] = ()


@dataclass
class Retired:
    """What a change took out of service; nothing scores with it from the next batch on."""

    champion: Runner | None = None
    canary: Runner | None = None
    shadows: list[Shadow] = field(default_factory=list)

    async def aclose(self, drain_within_s: float = DRAIN_WITHIN_S) -> None:
        """Wait for the shadows' last batches (at most ``drain_within_s`` each: a hung shadow's
        queue would otherwise hold whoever waits, a promotion among them, a timeout per batch),
        then close every retired model."""
        for shadow in self.shadows:
            try:
                await asyncio.wait_for(shadow.drain(), drain_within_s)
            except TimeoutError:
                log.warning(
                    "shadow %s taken out of service: its last batches dropped after %.0fs", shadow.name, drain_within_s
                )
        for runner in (self.champion, self.canary, *(s.runner for s in self.shadows)):
            if runner is not None:
                await runner.aclose()


async def change_roles(driver: Driver[Pipeline], change: RoleChange) -> Retired:
    """Apply ``change`` to ``driver``'s pipeline between two batches."""
    retired = Retired()
    async with driver.dispatcher.lock:
        pipeline = driver.pipeline
        roles = pipeline.roles
        if change.champion is not None:
            runner, cost = change.champion
            retired.champion = roles.champion
            pipeline.use_runner(runner)
            driver.batcher.use_cost_model(cost)
            driver.metrics.model_swaps += 1
        if change.stop_canary and roles.canary is not None:
            retired.canary = roles.canary.runner
            roles.use_canary(None)
            roles.rolled_back = change.rollback_reason
        for shadow in change.drop_shadows:
            if shadow in pipeline.shadows:
                pipeline.shadows.remove(shadow)
                retired.shadows.append(shadow)
    return retired
