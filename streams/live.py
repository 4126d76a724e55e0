"""The live loop: fetching, batching, scoring and committing run as three cooperating tasks.

- the fetcher keeps the batcher's queue filled from the consumer (and stops fetching when
  the queue holds enough, which is the back-pressure);
- the dispatcher asks the batcher for a plan whenever the runner is free, scores the
  batch and hands its outputs to the sink without waiting for acknowledgements, so the
  next batch is scored while this one's outputs travel;
- the committer waits for each batch's acknowledgements, in dispatch order, and marks its
  offsets committable (at-least-once); they are committed every ``commit_interval_ms``, and
  at once before partitions are revoked or the worker stops. Committing after every batch
  would put a broker round trip on the path of every batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from aiokafka import TopicPartition

from streams.batcher import Batcher
from streams.kafka_source import KafkaBatchSource, next_offsets
from streams.live_stats import LiveStats
from streams.pipeline import Pipeline, wall_clock_ms
from streams.records import SourceRecord

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    records: list[SourceRecord]
    acknowledged: Awaitable[None]
    scored: int
    dead_lettered: int


class LiveLoop:
    def __init__(
        self,
        source: KafkaBatchSource,
        pipeline: Pipeline,
        batcher: Batcher,
        *,
        late_events: str = "score",
        stats_interval_s: float = 10.0,
        commit_interval_ms: float = 1000.0,
        max_in_flight: int = 4,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.batcher = batcher
        self.late_events = late_events
        self.stats = LiveStats()
        self.stats_interval_s = stats_interval_s
        self.clock_ms = clock_ms
        # Enough queued to fill the next batches while one is scored; more only adds memory.
        self.queue_limit = 4 * batcher.policy.max_batch_size
        self.ack_ms = 5.0  # running estimate of send -> acknowledged, seeded low
        self.commit_interval_s = commit_interval_ms / 1000
        self._committable: dict[TopicPartition, int] = {}
        self._commits: asyncio.Queue[_InFlight] = asyncio.Queue(maxsize=max_in_flight)
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._dispatching = asyncio.Lock()
        batcher.overhead_ms = lambda: self.ack_ms
        source.on_revoke = self._finish_revoked

    def stop(self) -> None:
        """Stop taking new events; the batch being scored is finished, emitted and committed."""
        self._stopping.set()
        self._arrived.set()
        self._room.set()

    async def run(self) -> None:
        """Run until ``stop()``; raises if fetching, scoring or delivery fails (nothing is then committed
        past the failure, so a restarted worker scores those events again)."""
        fetcher = asyncio.create_task(self._fetch(), name="sluice-fetch")
        committer = asyncio.create_task(self._commit(), name="sluice-commit")
        reporter = asyncio.create_task(self._report(), name="sluice-report")
        dispatcher = asyncio.create_task(self._dispatch(), name="sluice-dispatch")
        periodic = asyncio.create_task(self._commit_periodically(), name="sluice-commit-timer")
        tasks: tuple[asyncio.Task[None], ...] = (fetcher, committer, reporter, dispatcher, periodic)
        try:
            await self._first_of(*tasks)
            # Stopping: the dispatcher finishes its batch, then the committer drains.
            await self._first_of(dispatcher, committer)
            drained = asyncio.create_task(self._commits.join())
            tasks += (drained,)
            await self._first_of(drained, committer)
            await self._commit_now()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            line = self.stats.interval_summary(self.pipeline.name, self.batcher.policy.latency_budget_ms)
            if line:
                log.info(line)

    @staticmethod
    async def _first_of(*tasks: asyncio.Task[None]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise a failure

    async def _fetch(self) -> None:
        while not self._stopping.is_set():
            room = self.queue_limit - len(self.batcher)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            records = await self.source.next_batch(max_records=room)
            if records and not self._stopping.is_set():
                self.batcher.add(records, self.clock_ms())
                self._arrived.set()

    async def _wait_for_arrivals(self, timeout_s: float | None) -> None:
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_s)

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            now = self.clock_ms()
            plan = self.batcher.plan(now, self.source.backlog())
            if not plan.take:
                await self._wait_for_arrivals(None if plan.wait_ms == float("inf") else plan.wait_ms / 1000)
                continue
            async with self._dispatching:
                batch = self.batcher.take(plan, now)
                self._room.set()
                expired: list[int] = []
                if self.late_events == "dead_letter" and batch.late:
                    expired = np.flatnonzero(batch.deadlines_ms < now).tolist()
                started = time.perf_counter()
                scored = await self.pipeline.score(batch.records, expired)
                acknowledged = await self.pipeline.emit(scored)
                self.batcher.cost.observe(len(batch), time.perf_counter() - started)
            await self._commits.put(
                _InFlight(
                    records=batch.records,
                    acknowledged=self._timed(acknowledged),
                    scored=scored.outcome.scored,
                    dead_lettered=scored.outcome.dead_lettered,
                )
            )

    async def _timed(self, acknowledged: Awaitable[None]) -> None:
        sent = time.perf_counter()
        await acknowledged
        took_ms = (time.perf_counter() - sent) * 1000
        self.ack_ms += 0.2 * (took_ms - self.ack_ms)

    async def _commit(self) -> None:
        budget = self.batcher.policy.latency_budget_ms
        while True:
            item = await self._commits.get()
            try:
                await item.acknowledged
                done_ms = self.clock_ms()
                self._committable.update(next_offsets(item.records))
                stamps = np.fromiter((r.timestamp for r in item.records), dtype=np.float64, count=len(item.records))
                latencies = done_ms - stamps
                late = int((latencies > budget).sum()) if budget is not None else 0
                self.stats.record(
                    events=len(item.records),
                    scored=item.scored,
                    dead_lettered=item.dead_lettered,
                    latencies_ms=latencies,
                    late=late,
                )
            finally:
                self._commits.task_done()

    async def _commit_now(self) -> None:
        if self._committable:
            offsets, self._committable = self._committable, {}
            await self.source.commit_offsets(offsets)

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval_s)
            await self._commit_now()

    async def _finish_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move to another worker: forget their queued events, finish and
        commit the rest."""
        dropped = self.batcher.drop_partitions({(tp.topic, tp.partition) for tp in revoked})
        async with self._dispatching:
            await self._commits.join()
            await self._commit_now()
        if dropped:
            log.info("%d queued events of revoked partitions left for their next owner", dropped)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            line = self.stats.interval_summary(self.pipeline.name, self.batcher.policy.latency_budget_ms)
            if line:
                log.info(line)
