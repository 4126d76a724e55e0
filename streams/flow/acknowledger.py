"""Acknowledgement: waits for each scored batch's outputs, in the order the batches were
scored, and only then reports the batch to the ``Progress`` (which commits offsets or saves
a checkpoint). A batch whose outputs the sink could not deliver is sent again, with back-off,
until it is acknowledged; every later batch waits behind it, so nothing is ever made durable
past an output that was not delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np

from streams.errors import DeliveryFailed
from streams.flow.live_stats import LiveStats
from streams.flow.pipeline import Stage
from streams.metrics import PipelineMetrics
from streams.records import OutputRecord, SourceRecord
from streams.source import Progress

log = logging.getLogger(__name__)

# Waiting for the model or the broker to come back: first retry soon, then no more often
# than this, so a long outage neither floods the log nor hammers a struggling device.
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


def retry_delays() -> Iterator[float]:
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(MAX_RETRY_S, delay * 2)


@dataclass
class InFlight:
    """A scored batch whose outputs were handed to the sink."""

    records: list[SourceRecord]
    outputs: list[OutputRecord]
    acknowledged: Awaitable[None]
    scored: int
    dead_lettered: int


class Acknowledger:
    def __init__(
        self,
        pipeline: Stage,
        progress: Progress,
        *,
        max_in_flight: int,
        latency_budget_ms: float | None,
        clock_ms: Callable[[], float],
        metrics: PipelineMetrics,
        stats: LiveStats,
    ) -> None:
        self.pipeline = pipeline
        self.progress = progress
        self.latency_budget_ms = latency_budget_ms
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.stats = stats
        # Running estimate of send -> acknowledged, which the batcher adds to a batch's cost.
        self.ack_ms = 5.0
        self._queue: asyncio.Queue[InFlight] = asyncio.Queue(maxsize=max_in_flight)

    async def put(self, item: InFlight) -> None:
        """Queue a sent batch; waits while ``max_in_flight`` batches are unacknowledged."""
        item.acknowledged = self._timed(item.acknowledged)
        await self._queue.put(item)

    async def drain(self) -> None:
        """Until every batch queued so far is acknowledged and reported."""
        await self._queue.join()

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                try:
                    await item.acknowledged
                except DeliveryFailed as exc:
                    await self._redeliver(item, exc)
                self._report(item)
            finally:
                self._queue.task_done()

    def _report(self, item: InFlight) -> None:
        self.progress.acknowledged(item.records, item.scored, item.dead_lettered)
        stamps = np.fromiter((r.timestamp for r in item.records), dtype=np.float64, count=len(item.records))
        latencies = self.clock_ms() - stamps
        budget = self.latency_budget_ms
        late = int((latencies > budget).sum()) if budget is not None else 0
        self.metrics.acknowledged(item.scored, latencies / 1000, late)
        self.stats.record(
            events=len(item.records),
            scored=item.scored,
            dead_lettered=item.dead_lettered,
            latencies_ms=latencies,
            late=late,
        )

    async def _timed(self, acknowledged: Awaitable[None]) -> None:
        sent = time.perf_counter()
        await acknowledged
        took_ms = (time.perf_counter() - sent) * 1000
        self.ack_ms += 0.2 * (took_ms - self.ack_ms)

    async def _redeliver(self, item: InFlight, error: DeliveryFailed) -> None:
        """Send a batch's outputs again until the broker acknowledges them."""
        for attempt, delay in enumerate(retry_delays(), start=1):
            log.warning(
                "pipeline %s: outputs of %d events not acknowledged (%r); sending them again in %.1fs (attempt %d)",
                self.pipeline.name,
                len(item.records),
                error,
                delay,
                attempt,
            )
            await asyncio.sleep(delay)
            try:
                await (await self.pipeline.deliver(item.outputs))
            except DeliveryFailed as exc:
                error = exc
                continue
            log.info("pipeline %s: outputs delivered after %d attempt(s)", self.pipeline.name, attempt)
            return
