"""Acknowledgement: waits for each scored batch's outputs to be settled by ``Delivery``, in the
order the batches were scored, and only then reports the batch to the ``Progress`` (which
commits offsets or saves a checkpoint). While ``Delivery`` re-sends a batch's outputs, every
later batch waits behind it, so nothing is ever made durable past an output that was not
delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.flow.delivery import Delivery, Shipment
from streams.flow.live_stats import LiveStats
from streams.metrics import PipelineMetrics
from streams.records import SourceRecord
from streams.source import Progress


@dataclass
class InFlight:
    """A scored batch whose outputs were handed to ``Delivery``."""

    records: list[SourceRecord]
    shipment: Shipment
    scored: int
    dead_lettered: int


class Acknowledger:
    def __init__(
        self,
        delivery: Delivery,
        progress: Progress,
        *,
        max_in_flight: int,
        latency_budget_ms: float | None,
        clock_ms: Callable[[], float],
        metrics: PipelineMetrics,
        stats: LiveStats,
    ) -> None:
        self.delivery = delivery
        self.progress = progress
        self.latency_budget_ms = latency_budget_ms
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.stats = stats
        self._queue: asyncio.Queue[InFlight] = asyncio.Queue(maxsize=max_in_flight)

    async def put(self, item: InFlight) -> None:
        """Queue a sent batch; waits while ``max_in_flight`` batches are unacknowledged."""
        await self._queue.put(item)

    async def drain(self) -> None:
        """Until every batch queued so far is acknowledged and reported."""
        await self._queue.join()

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self.delivery.settle(item.shipment, events=len(item.records))
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
