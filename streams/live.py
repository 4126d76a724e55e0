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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from models.protocol import Runner
from streams.batcher import IN_FLIGHT_BATCHES, QUEUED_BATCHES, Batch, Batcher
from streams.cost_model import CostModel, reference_sizes
from streams.errors import ModelError
from streams.kafka_source import KafkaBatchSource, next_offsets
from streams.live_stats import LiveStats
from streams.metrics import PipelineMetrics
from streams.pipeline import Pipeline, Scored, wall_clock_ms
from streams.records import OutputRecord, SourceRecord

log = logging.getLogger(__name__)

# Waiting for the model or the broker to come back: first retry soon, then no more often
# than this, so a long outage neither floods the log nor hammers a struggling device.
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0
# A fetcher blocked this long by a full queue pauses its partitions and keeps polling, so
# the group does not take it for dead (max.poll.interval.ms) while the model is down.
PAUSE_AFTER_S = 5.0


def retry_delays() -> Iterator[float]:
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(MAX_RETRY_S, delay * 2)


@dataclass
class _InFlight:
    records: list[SourceRecord]
    outputs: list[OutputRecord]
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
        max_in_flight: int = IN_FLIGHT_BATCHES,
        clock_ms: Callable[[], float] = wall_clock_ms,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.batcher = batcher
        self.late_events = late_events
        self.stats = LiveStats()
        self.metrics = metrics or PipelineMetrics(pipeline.name)
        self.metrics.probe = self
        self.stats_interval_s = stats_interval_s
        self.clock_ms = clock_ms
        self.queue_limit = QUEUED_BATCHES * batcher.policy.max_batch_size
        self.ack_ms = 5.0  # running estimate of send -> acknowledged, seeded low
        self.commit_interval_s = commit_interval_ms / 1000
        self._committable: dict[TopicPartition, int] = {}
        self._commits: asyncio.Queue[_InFlight] = asyncio.Queue(maxsize=max_in_flight)
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._dispatching = asyncio.Lock()
        self._model_error: ModelError | None = None
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
                try:
                    await asyncio.wait_for(self._room.wait(), PAUSE_AFTER_S)
                except TimeoutError:
                    records = await self.source.keep_alive()
                    self.metrics.received += len(records)
                    if records:
                        self.batcher.add(records, self.clock_ms())
                continue
            records = await self.source.next_batch(max_records=room)
            self.metrics.received += len(records)
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
                sent = await self._score_and_emit(batch, expired)
                if sent is not None:
                    self.batcher.cost.observe(len(batch), time.perf_counter() - started)
            if sent is None:
                sent = await self._retry_until_the_model_recovers(batch, expired)
                if sent is None:
                    return  # stopping: the batch is not committed and will be scored after a restart
            scored, acknowledged = sent
            self.metrics.scored_batch(len(batch), scored.outcome.infer_seconds, scored.outcome.errors)
            await self._commits.put(
                _InFlight(
                    records=batch.records,
                    outputs=scored.outputs,
                    acknowledged=self._timed(acknowledged),
                    scored=scored.outcome.scored,
                    dead_lettered=scored.outcome.dead_lettered,
                )
            )

    async def _score_and_emit(self, batch: Batch, expired: list[int]) -> tuple[Scored, Awaitable[None]] | None:
        """Score and send; None when the model is down (nothing was sent)."""
        try:
            scored = await self.pipeline.score(batch.records, expired)
        except ModelError as exc:
            if not exc.retriable:
                raise
            self._model_error = exc  # the model is down, not the events at fault: retry the batch
            return None
        try:
            acknowledged = await self.pipeline.emit(scored)
        except KafkaError as exc:
            # The broker is unreachable: the committer re-sends these outputs until it is back.
            acknowledged = _raise(exc)
        return scored, acknowledged

    async def _retry_until_the_model_recovers(
        self, batch: Batch, expired: list[int]
    ) -> tuple[Scored, Awaitable[None]] | None:
        """Retry the batch with back-off; consuming stops meanwhile (the queue fills, the fetcher
        pauses) and no offset is committed past it. Between attempts the lock is free, so a
        rebalance can still take partitions away."""
        first = batch.records[0]
        down_since = time.monotonic()
        for attempt, delay in enumerate(retry_delays(), start=1):
            log.error(
                "pipeline %s: MODEL UNAVAILABLE, consuming stopped, nothing committed from %s[%d]@%d on: %s; "
                "retry %d in %.1fs",
                self.pipeline.name,
                first.topic,
                first.partition,
                first.offset,
                self._model_error,
                attempt,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                log.warning(
                    "pipeline %s: stopping while the model is unavailable; %d events left unscored and "
                    "uncommitted, for the next worker",
                    self.pipeline.name,
                    len(batch) + len(self.batcher),
                )
                return None
            async with self._dispatching:
                sent = await self._score_and_emit(batch, expired)
            if sent is not None:
                self._model_error = None
                log.warning(
                    "pipeline %s: the model recovered after %.1fs (%d retries); consuming again",
                    self.pipeline.name,
                    time.monotonic() - down_since,
                    attempt,
                )
                return sent
        return None  # unreachable: retry_delays never ends

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
                try:
                    await item.acknowledged
                except KafkaError as exc:
                    await self._redeliver(item, exc)
                done_ms = self.clock_ms()
                self._committable.update(next_offsets(item.records))
                stamps = np.fromiter((r.timestamp for r in item.records), dtype=np.float64, count=len(item.records))
                latencies = done_ms - stamps
                late = int((latencies > budget).sum()) if budget is not None else 0
                self.metrics.acknowledged(item.scored, latencies / 1000, late)
                self.stats.record(
                    events=len(item.records),
                    scored=item.scored,
                    dead_lettered=item.dead_lettered,
                    latencies_ms=latencies,
                    late=late,
                )
            finally:
                self._commits.task_done()

    async def _redeliver(self, item: _InFlight, error: KafkaError) -> None:
        """Send a batch's outputs again until the broker acknowledges them; its offsets (and every
        later batch's, which wait behind it) stay uncommitted until then."""
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
            except KafkaError as exc:
                error = exc
                continue
            log.info("pipeline %s: outputs delivered after %d attempt(s)", self.pipeline.name, attempt)
            return

    async def _commit_now(self) -> None:
        if self._committable:
            offsets, self._committable = self._committable, {}
            if not await self.source.commit_offsets(offsets):
                # Not committed (the broker is away): keep them for the next try, unless newer ones came.
                for tp, offset in offsets.items():
                    self._committable[tp] = max(offset, self._committable.get(tp, 0))

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

    async def swap_runner(self, runner: Runner, cost: CostModel) -> Runner:
        """Serve ``runner`` from the next batch on; returns the old one, no longer in use.

        Taken between two batches (the dispatch lock), so every batch, and so every output,
        is scored by exactly one model, and the output names it.
        """
        async with self._dispatching:
            old = self.pipeline.runner
            self.pipeline.use_runner(runner)
            self.batcher.cost = cost
            self.metrics.model_swaps += 1
        return old

    # What the metrics collector reads at scrape time (streams.metrics.LiveProbe).

    def queue_depth(self) -> int:
        return len(self.batcher)

    def lag_by_partition(self) -> dict[tuple[str, int], int]:
        return self.source.lag_by_partition()

    def serving(self) -> tuple[str, str]:
        return self.pipeline.runner.name, self.pipeline.runner.version

    def predicted_batch_seconds(self) -> dict[int, float]:
        return {n: self.batcher.cost.predict(n) for n in reference_sizes(self.batcher.policy.max_batch_size)}

    def model_unavailable(self) -> bool:
        return self._model_error is not None

    def lost_outputs(self) -> int:
        return self.pipeline.lost_outputs

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            line = self.stats.interval_summary(self.pipeline.name, self.batcher.policy.latency_budget_ms)
            if line:
                log.info(line)


async def _raise(exc: BaseException) -> None:
    raise exc
