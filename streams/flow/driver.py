"""The one driver that runs a pipeline, live or backfill: the two modes differ only in the
data handed to it (the source, the progress, the batcher's policy), not in a second loop.

Three parts run as tasks, each in its own module:

- the ``Feeder`` keeps the batcher's queue filled from the source, no fuller (back-pressure);
- the ``Dispatcher`` takes batches as the batcher plans them, scores them (decoding the next
  while the model runs) and hands their outputs to the sink;
- the ``Acknowledger`` waits for each batch's outputs, in order, then reports it to the
  ``Progress``, which commits offsets to the consumer group (live) or saves a checkpoint
  (backfill) when due, and at once before partitions are revoked or the driver stops.

``run`` returns when ``stop()`` is called or a bounded source is exhausted, after everything
scored is acknowledged and committed; it raises if any part fails (nothing is then committed
past the failure, so a restart scores those events again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client.core import Metric

from models.protocol import Runner
from streams.flow.acknowledger import Acknowledger
from streams.flow.batcher import IN_FLIGHT_BATCHES, QUEUED_BATCHES, Batcher
from streams.flow.cost_model import CostModel
from streams.flow.dispatcher import Dispatcher, LateEvents, ModelDown
from streams.flow.feeder import Feeder
from streams.flow.live_stats import LiveStats
from streams.flow.model_metrics import PipelineModels, model_families, read_models
from streams.flow.pipeline import Pipeline, Stage, wall_clock_ms
from streams.metrics import PipelineMetrics
from streams.records import Partition
from streams.source import Progress, Source

log = logging.getLogger(__name__)

# The scoring ``Pipeline`` (it has a model to swap and to name), or another stage (re-keying).
StageT = TypeVar("StageT", bound=Stage)


class Driver(Generic[StageT]):
    def __init__(
        self,
        source: Source,
        pipeline: StageT,
        batcher: Batcher,
        progress: Progress,
        *,
        late_events: LateEvents = "score",
        on_model_down: ModelDown = "retry",
        stats_interval_s: float | None = None,
        clock_ms: Callable[[], float] = wall_clock_ms,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.batcher = batcher
        self.progress = progress
        self.stats_interval_s = stats_interval_s
        self.metrics = metrics or PipelineMetrics(pipeline.name)
        self.stats = LiveStats()
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()
        self.feeder = Feeder(
            source,
            batcher,
            queue_limit=QUEUED_BATCHES * batcher.policy.max_batch_size,
            clock_ms=clock_ms,
            metrics=self.metrics,
        )
        self.acknowledger = Acknowledger(
            pipeline.delivery,
            progress,
            max_in_flight=IN_FLIGHT_BATCHES,
            latency_budget_ms=batcher.policy.latency_budget_ms,
            clock_ms=clock_ms,
            metrics=self.metrics,
            stats=self.stats,
        )
        self.dispatcher = Dispatcher(
            pipeline,
            batcher,
            self.feeder,
            self.acknowledger,
            backlog=source.backlog,
            late_events=late_events,
            on_model_down=on_model_down,
            clock_ms=clock_ms,
            metrics=self.metrics,
        )

    def stop(self) -> None:
        """Stop taking new events; the batch being scored is finished, emitted and committed."""
        self.feeder.stop()
        self.dispatcher.stop()

    def fail(self, error: BaseException) -> None:
        """Stop on ``error``, raised by ``run``, committing nothing more: for a failure met outside
        the driver's own tasks (a partition that could not be taken over, in a rebalance listener
        that would only log it)."""
        if self._failure is None:
            self._failure = error
            self._failed.set()

    async def run(self) -> None:
        dispatcher = asyncio.create_task(self.dispatcher.run(), name="sluice-dispatch")
        acknowledger = asyncio.create_task(self.acknowledger.run(), name="sluice-acknowledge")
        tasks = [
            dispatcher,
            acknowledger,
            asyncio.create_task(self.feeder.run(), name="sluice-fetch"),
            asyncio.create_task(self._commit_when_due(), name="sluice-commit"),
            asyncio.create_task(self._raise_on_failure(), name="sluice-failure"),
        ]
        if self.stats_interval_s:
            tasks.append(asyncio.create_task(self._report(self.stats_interval_s), name="sluice-report"))
        try:
            running = set(tasks)
            while not dispatcher.done():
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a part failed: re-raise; a feeder whose source ended is fine
            self.feeder.stop()
            drained = asyncio.create_task(self.acknowledger.drain())
            tasks.append(drained)
            done, _ = await asyncio.wait((drained, acknowledger), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            await self.progress.commit(final=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._log_summary()

    async def _raise_on_failure(self) -> None:
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    async def commit_quietly(self) -> None:
        """Commit between two batches, with every batch sent so far acknowledged."""
        async with self.dispatcher.lock:
            await self.acknowledger.drain()
            await self.progress.commit()

    async def _commit_when_due(self) -> None:
        while True:
            await self.progress.wait_until_due()
            if self.progress.needs_quiet:
                await self.commit_quietly()
            else:
                await self.progress.commit()

    async def release_partitions(self, revoked: set[Partition]) -> None:
        """Before partitions move to another worker: forget their queued events, finish and
        commit the rest."""
        dropped = self.batcher.drop_partitions(revoked)
        async with self.dispatcher.lock:
            self.dispatcher.give_back()
            dropped += self.batcher.drop_partitions(revoked)
            await self.acknowledger.drain()
            await self.progress.commit()
        if dropped:
            log.info("%d queued events of revoked partitions left for their next owner", dropped)

    async def swap_runner(self, runner: Runner, cost: CostModel) -> Runner:
        """Serve ``runner`` from the next batch on; returns the old one, no longer in use.

        Taken between two batches, so every batch, and so every output, is scored by exactly
        one model, and the output names it.
        """
        async with self.dispatcher.lock:
            pipeline = self._scoring()
            old = pipeline.runner
            pipeline.use_runner(runner)
            self.batcher.use_cost_model(cost)
            self.metrics.model_swaps += 1
        return old

    async def _report(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._log_summary()

    def _log_summary(self) -> None:
        line = self.stats.interval_summary(self.pipeline.name, self.batcher.policy.latency_budget_ms, self.models())
        if line and self.stats_interval_s:
            log.info(line)

    # What the metrics collector reads at scrape time (streams.metrics.LiveProbe).

    def queue_depth(self) -> int:
        return len(self.batcher)

    def lag_by_partition(self) -> dict[Partition, int]:
        return self.source.lag_by_partition()

    def serving(self) -> tuple[str, str] | None:
        if not isinstance(self.pipeline, Pipeline):
            return None  # a stage without a model (re-keying)
        return self.pipeline.runner.name, self.pipeline.runner.version

    def predicted_batch_seconds(self) -> dict[int, float]:
        return self.batcher.predicted_seconds()

    def model_unavailable(self) -> bool:
        return self.dispatcher.model_error is not None

    def _scoring(self) -> Pipeline:
        if not isinstance(self.pipeline, Pipeline):
            raise TypeError(f"{self.pipeline.name} is not a scoring pipeline: it has no model")
        return self.pipeline

    def lost_outputs(self) -> int:
        return self.pipeline.delivery.lost_outputs

    def models(self) -> PipelineModels | None:
        """The pipeline's models and their evidence; None for a stage without models (re-keying)."""
        return read_models(self.pipeline) if isinstance(self.pipeline, Pipeline) else None

    def model_metrics(self, pipeline: str) -> list[Metric]:
        models = self.models()
        return [] if models is None else model_families(pipeline, models)
