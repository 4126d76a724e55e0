"""The live loop: fetch a batch, run it through the pipeline, commit, repeat, until asked to stop."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from streams.kafka_source import KafkaBatchSource
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class LiveCounters:
    batches: int = 0
    events: int = 0
    scored: int = 0
    dead_lettered: int = 0


class LiveLoop:
    def __init__(self, source: KafkaBatchSource, pipeline: Pipeline, *, report_every_s: float = 10.0) -> None:
        self.source = source
        self.pipeline = pipeline
        self.counters = LiveCounters()
        self.report_every_s = report_every_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in flight, commit it, then return from ``run``."""
        self._stopping.set()

    async def run(self) -> None:
        last_report = time.monotonic()
        reported_events = 0
        while not self._stopping.is_set():
            records = await self.source.next_batch()
            if not records:
                continue
            async with self.source.in_flight:
                outcome = await self.pipeline.process(records)
                await self.source.commit(records)
            c = self.counters
            c.batches += 1
            c.events += outcome.events
            c.scored += outcome.scored
            c.dead_lettered += outcome.dead_lettered
            now = time.monotonic()
            if now - last_report >= self.report_every_s:
                rate = (c.events - reported_events) / (now - last_report)
                log.info(
                    "pipeline %s: %d events (%.0f/s), %d scored, %d dead-lettered, %d batches (avg %.1f)",
                    self.pipeline.name,
                    c.events,
                    rate,
                    c.scored,
                    c.dead_lettered,
                    c.batches,
                    c.events / c.batches,
                )
                last_report, reported_events = now, c.events
