"""Fetching and back-pressure: keeps the batcher's queue filled from a source, no fuller.

The queue holds at most ``queue_limit`` events (a few of the largest batches). When it is
full the feeder waits for room; if none comes for ``PAUSE_AFTER_S`` (the model is slow or
down), it asks the source to keep its group membership without fetching more, so the group
does not take a stalled worker for a dead one (``max.poll.interval.ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from streams.flow.batcher import Batcher
from streams.metrics import PipelineMetrics
from streams.records import SourceRecord
from streams.source import Source

PAUSE_AFTER_S = 5.0


class Feeder:
    def __init__(
        self,
        source: Source,
        batcher: Batcher,
        *,
        queue_limit: int,
        clock_ms: Callable[[], float],
        metrics: PipelineMetrics,
        pause_after_s: float = PAUSE_AFTER_S,
    ) -> None:
        self.source = source
        self.batcher = batcher
        self.queue_limit = queue_limit
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.pause_after_s = pause_after_s
        # Set whenever events were queued (or the source ended): the dispatcher waits on it.
        self.arrived = asyncio.Event()
        # True once a bounded source handed out everything: nothing more will be queued.
        self.finished = False
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()

    def made_room(self) -> None:
        """The dispatcher took events from the queue."""
        self._room.set()

    def stop(self) -> None:
        self._stopping.set()
        self._room.set()

    async def wait_for_arrivals(self, timeout_s: float | None) -> None:
        """Until events are queued, the source ends, or ``timeout_s`` passes."""
        self.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), timeout_s)

    async def run(self) -> None:
        try:
            while not self._stopping.is_set() and not self.source.exhausted:
                room = self.queue_limit - len(self.batcher)
                if room <= 0:
                    await self._wait_for_room()
                    continue
                records = await self.source.next_batch(max_records=room)
                if records and not self._stopping.is_set():
                    self._queue(records)
        finally:
            self.finished = self.source.exhausted
            self.arrived.set()

    async def _wait_for_room(self) -> None:
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), self.pause_after_s)
        except TimeoutError:
            self._queue(await self.source.keep_alive())

    def _queue(self, records: Sequence[SourceRecord]) -> None:
        self.metrics.received += len(records)
        if records:
            self.batcher.add(records, self.clock_ms())
            self.arrived.set()
