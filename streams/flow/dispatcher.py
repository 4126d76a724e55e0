"""Dispatch: whenever the model is free, ask the batcher what to take, score it, and hand the
outputs to ``Delivery`` without waiting for their acknowledgement (the ``Acknowledger`` does).

Two stages overlap: while one batch is scored (the model runs in its own thread), the event
loop decodes the next one, if a full batch is already queued. With less queued, the next
batch is planned when the model is free, as the latency budget wants: taking a partial batch
early would only make it smaller.

Taking, scoring and handing over a batch happens under ``lock``; whoever must act between
two batches (a model swap, a rebalance, a checkpoint) takes it. Batches taken but not yet
scored (``_prepared``) go back to the queue when a rebalance asks (``give_back``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streams.codecs.codec import Decoded
from streams.errors import ModelError
from streams.flow.acknowledger import Acknowledger, InFlight
from streams.flow.backoff import retry_delays
from streams.flow.batcher import Batch, Batcher, Plan
from streams.flow.feeder import Feeder
from streams.flow.pipeline import Stage, expire
from streams.metrics import PipelineMetrics

log = logging.getLogger(__name__)

# What to do with events that missed their deadline before being scored: "score" them anyway
# (counted late), or "dead_letter" them (their budget is what the caller cares about).
LateEvents = str
# What to do when the model fails on a whole batch with a retriable error: "retry" with back-off
# and consume nothing meanwhile (the worker), or "raise" and stop (the backfill: its operator
# fixes the model and resumes from the checkpoint).
ModelDown = Literal["retry", "raise"]


@dataclass
class _Prepared:
    batch: Batch
    decoded: Decoded
    decode_seconds: float
    # Batch indices of events past their deadline when taken, to dead-letter (``late_events``).
    expired: list[int]


class Dispatcher:
    def __init__(
        self,
        pipeline: Stage,
        batcher: Batcher,
        feeder: Feeder,
        acknowledger: Acknowledger,
        *,
        backlog: Callable[[], int],
        late_events: LateEvents,
        on_model_down: ModelDown,
        clock_ms: Callable[[], float],
        metrics: PipelineMetrics,
    ) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.feeder = feeder
        self.acknowledger = acknowledger
        self.backlog = backlog
        self.late_events = late_events
        self.on_model_down = on_model_down
        self.clock_ms = clock_ms
        self.metrics = metrics
        self.lock = asyncio.Lock()
        # Entered while a batch is scored and handed to the producer (not while its acknowledgements
        # are waited for): live, the shadows' processes
        # are paused meanwhile (``app.shadow_pause``), so the spare CPU they use is never the batch's.
        self.while_scoring: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        self.model_error: ModelError | None = None
        self._prepared: deque[_Prepared] = deque()
        self._stopping = asyncio.Event()
        # While the model is down: since when, and the retry schedule.
        self._down_since = 0.0
        self._delays = enumerate(retry_delays(), start=1)
        self._attempt, self._delay = 0, 0.0

    def stop(self) -> None:
        """Finish the batch being scored, then return; batches taken but not scored are not committed."""
        self._stopping.set()
        self.feeder.arrived.set()

    def give_back(self) -> int:
        """Return batches taken but not yet scored to the front of the queue (call holding ``lock``)."""
        events = 0
        while self._prepared:
            batch = self._prepared.pop().batch
            self.batcher.give_back(batch)
            events += len(batch)
        return events

    async def run(self) -> None:
        """Until ``stop()``, or until the feeder's source ended and everything taken was scored."""
        while not self._stopping.is_set():
            if not self._prepared and not await self._prepare_next():
                if self.feeder.finished and not len(self.batcher):
                    return
                continue
            async with self.lock:
                if self._prepared:  # else a rebalance gave the batch back meanwhile
                    await self._score_one()
            if self.model_error is not None:
                await self._wait_for_the_model()

    async def _prepare_next(self) -> bool:
        """Take and decode the next batch if the batcher says so, else wait as it says."""
        plan = self._take_as_planned()
        if plan.take:
            return True
        if self.feeder.finished:
            return False
        await self.feeder.wait_for_arrivals(None if plan.wait_ms == float("inf") else plan.wait_ms / 1000)
        return False

    def _take_as_planned(self) -> Plan:
        """Ask the batcher; take and decode what it says to take now (nothing, if it says wait)."""
        now = self.clock_ms()
        plan = self.batcher.plan(now, self.backlog(), overhead_ms=self.pipeline.delivery.ack_ms)
        if plan.take:
            self._prepare(plan, now)
        return plan

    def _prepare(self, plan: Plan, now: float) -> None:
        started = time.perf_counter()
        batch = self.batcher.take(plan, now)
        self.feeder.made_room()
        expired: list[int] = []
        if self.late_events == "dead_letter" and batch.late:
            expired = np.flatnonzero(batch.deadlines_ms < now).tolist()
        decoded = self.pipeline.decode(batch.records, skip=expired)
        self._prepared.append(_Prepared(batch, decoded, time.perf_counter() - started, expired))

    async def _score_one(self) -> None:
        with contextlib.ExitStack() as scope:
            scope.enter_context(self.while_scoring())
            await self._score_one_in(scope)

    async def _score_one_in(self, scope: contextlib.ExitStack) -> None:
        """Score the next batch inside ``scope`` (``while_scoring``), which ends once its outputs are
        handed over: waiting for the broker's acknowledgements takes no CPU, and pauses no shadow."""
        job = self._prepared.popleft()
        started = time.perf_counter()
        # Per-key features need the state of every batch before this one: computed here, in order.
        # Then late events leave the flow, counted in their keys' state: they happened all the same.
        decoded = expire(self.pipeline.featurize(job.batch.records, job.decoded), job.expired)
        scoring = asyncio.ensure_future(self.pipeline.finish(job.batch.records, decoded))
        # One turn of the loop hands the batch to the model's thread; only then does decoding
        # the next batch here overlap with inference instead of delaying it.
        await asyncio.sleep(0)
        if not self._prepared and len(self.batcher) >= self.batcher.policy.max_batch_size:
            self._take_as_planned()
        try:
            scored = await scoring
        except ModelError as exc:
            if not exc.retriable or self.on_model_down == "raise":
                raise
            self._prepared.appendleft(job)  # the model is down, not the events at fault: retry the batch
            self._model_down(exc, job.batch)
            return
        shipment = await self.pipeline.delivery.send(scored.outputs)
        scope.close()
        self.batcher.observe(len(job.batch), job.decode_seconds + time.perf_counter() - started)
        self.metrics.scored_batch(len(job.batch), scored.outcome.infer_seconds, scored.outcome.errors)
        if self.model_error is not None:
            self._model_recovered()
        await self.acknowledger.put(
            InFlight(
                records=job.batch.records,
                shipment=shipment,
                scored=scored.outcome.scored,
                dead_lettered=scored.outcome.dead_lettered,
            )
        )

    # The model is down: consuming stops meanwhile (the queue fills, the feeder pauses) and
    # nothing is committed past the batch. Between attempts the lock is free, so a rebalance
    # can still take partitions away.

    def _model_down(self, error: ModelError, batch: Batch) -> None:
        if self.model_error is None:
            self._down_since = time.monotonic()
            self._delays = enumerate(retry_delays(), start=1)
        self.model_error = error
        self._attempt, self._delay = next(self._delays)
        first = batch.records[0]
        log.error(
            "pipeline %s: MODEL UNAVAILABLE, consuming stopped, nothing committed from %s[%d]@%d on: %s; "
            "retry %d in %.1fs",
            self.pipeline.name,
            first.topic,
            first.partition,
            first.offset,
            error,
            self._attempt,
            self._delay,
        )

    async def _wait_for_the_model(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._delay)
        if self._stopping.is_set():
            log.warning(
                "pipeline %s: stopping while the model is unavailable; %d events left unscored and "
                "uncommitted, for the next worker",
                self.pipeline.name,
                sum(len(p.batch) for p in self._prepared) + len(self.batcher),
            )

    def _model_recovered(self) -> None:
        self.model_error = None
        log.warning(
            "pipeline %s: the model recovered after %.1fs (%d retries); consuming again",
            self.pipeline.name,
            time.monotonic() - self._down_since,
            self._attempt,
        )
