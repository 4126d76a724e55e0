"""A shadow model: scored on the very batches the serving models scored, never acted on.

The pipeline offers each scored batch (its events' inputs, with the per-key features they were
served with, and the served predictions) to every shadow. A shadow has its own bounded queue,
task and model (live, in a process of its own: ``models.process_runner``), so it never delays or
changes the served outputs: live, when its queue
is full it skips the whole batch and counts it (``wait=False``); a backfill, which has no
budget to keep, waits for room instead so every event is scored by every model (``wait=True``).

Its predictions go to the shadow topic, keyed like the served outputs, each with the shadow's
name and version and the served model's score beside it (``streams.codecs.shadow_encode``).
They are evidence, not decisions: sent at least once while the worker runs, but not covered
by the input's commits or transactions (waiting for them would delay the champion), so a
crash may lose a few; their agreement with the served model is counted as they are scored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from models.protocol import Runner
from streams.codecs.shadow_encode import encode_shadow
from streams.errors import ModelTimeout, OutputRefused
from streams.flow.breaker import timed
from streams.flow.delivery import Delivery, Sink
from streams.flow.model_stats import Agreement, ModelStats
from streams.flow.scored_groups import OnScored, ScoredGroup
from streams.records import OutputRecord

log = logging.getLogger(__name__)

# At most one log line per this many seconds about a shadow's failures or skips.
LOG_EVERY_S = 30.0


class Shadow:
    def __init__(
        self,
        runner: Runner,
        *,
        sink: Sink,
        topic: str,
        pipeline: str,
        stats: ModelStats,
        threshold: float = 0.5,
        queue_batches: int = 4,
        wait: bool = False,
        key_by_position: bool = False,
        timeout_s: float | None = None,
        on_scored: OnScored | None = None,
    ) -> None:
        self.runner = runner
        # Told each batch's predictions as they are made (a backfill's evaluation collects them).
        self.on_scored = on_scored
        self._timed = timed(runner, timeout_s)
        # Whether the served models have more events waiting (the driver's queue): set by whoever
        # runs the pipeline live; never busy by default.
        self.champion_busy: Callable[[], bool] = lambda: False
        # Its outputs go through a delivery of its own on the pipeline's sink: sent again while the
        # destination is away, like any output, but one refused for good is lost evidence
        # (``lost_outputs``), never a dead letter: its event was served, and a dead letter would say
        # that it was not. So this delivery never writes a dead letter, and names no topic for one.
        self._delivery = Delivery(
            _CountingRefusals(sink, self._refused),
            pipeline=pipeline,
            dead_letter_topic="",
            max_copy_bytes=0,
            clock_ms=_never_called,
            label=f"{pipeline} (shadow {runner.name})",
        )
        self.topic = topic
        self.stats = stats
        if stats.agreement is None:
            stats.agreement = Agreement(threshold)
        self.wait = wait
        self.key_by_position = key_by_position
        self._queue: asyncio.Queue[ScoredGroup | None] = asyncio.Queue(maxsize=max(1, queue_batches))
        self._task: asyncio.Task[None] | None = None
        self._last_log = -LOG_EVERY_S
        self.lost_outputs = 0

    @property
    def name(self) -> str:
        return self.runner.name

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sluice-shadow-{self.runner.name}")

    async def offer(self, group: ScoredGroup) -> None:
        """Queue a scored batch for the shadow; live, a full queue skips it (counted) instead of waiting."""
        if not len(group.rows):
            return
        self.start()
        if not self.wait and self.champion_busy():
            # Live, a shadow takes only what the champion leaves: with more events already waiting
            # for the champion, its encoding and producing on the event loop would delay them.
            self.stats.skipped(len(group.rows))
            return
        if self.wait:
            await self._queue.put(group)
            return
        try:
            self._queue.put_nowait(group)
        except asyncio.QueueFull:
            self.stats.skipped(len(group.rows))
            self._log_now(
                "shadow %s v%s is behind: skipped a batch of %d event(s) (%d batch(es) skipped so far)",
                self.runner.name,
                self.runner.version,
                len(group.rows),
                self.stats.skipped_batches,
            )

    async def _run(self) -> None:
        while (job := await self._queue.get()) is not None:
            try:
                await self._score(job)
            except Exception as exc:  # noqa: BLE001 - dead, the task would leave a backfill waiting for room forever
                self.stats.failed(timed_out=False)
                self._log_now("shadow %s v%s lost a batch: %r", self.runner.name, self.runner.version, exc)

    async def _score(self, job: ScoredGroup) -> None:
        started = time.perf_counter()
        try:
            predictions = np.asarray(await self._timed.predict(job.inputs))
            if predictions.ndim == 0 or len(predictions) != len(job.rows):
                raise ValueError(f"{predictions.size} prediction(s) for {len(job.rows)} events")
            if predictions.dtype.kind not in "biuf" or predictions.size < len(predictions):
                raise ValueError(f"no number per event: {predictions.dtype} predictions of shape {predictions.shape}")
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is evidence, never the pipeline's
            self.stats.failed(timed_out=isinstance(exc, ModelTimeout))
            self._log_now("shadow %s v%s failed a batch (not retried): %s", self.runner.name, self.runner.version, exc)
            return
        self.stats.scored(predictions, time.perf_counter() - started)
        if self.stats.agreement is not None:
            self.stats.agreement.observe(predictions, job.served)
        if self.on_scored is not None:
            self.on_scored(job.records, job.rows, job.ids, predictions)
        outputs = encode_shadow(
            job.records,
            job.rows,
            job.ids,
            predictions,
            job.served,
            topic=self.topic,
            name=self.runner.name,
            version=self.runner.version,
            served_name=job.served_name,
            served_version=job.served_version,
            key_by_position=self.key_by_position,
        )
        try:
            await self._delivery.deliver(outputs)
        except Exception as exc:  # noqa: BLE001 - see the module's docstring: evidence, not decisions
            self.lost_outputs += len(outputs)
            self._log_now(
                "shadow %s: %d output(s) not delivered to %s: %s", self.runner.name, len(outputs), self.topic, exc
            )

    def _refused(self, refused: Sequence[tuple[OutputRecord, str]]) -> None:
        self.lost_outputs += len(refused)
        self._log_now(
            "shadow %s: %d output(s) refused for good by the destination (%s), not sent again",
            self.runner.name,
            len(refused),
            refused[0][1],
        )

    def _log_now(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message, *args)

    async def drain(self) -> None:
        """Score what is queued, then stop the task (a backfill's last batches; a worker's stop)."""
        if self._task is None:
            return
        await self._queue.put(None)
        task, self._task = self._task, None
        await task  # cancelling the caller (a stop's deadline) cancels the shadow, and is never swallowed

    async def aclose(self) -> None:
        await self.drain()
        await self.runner.aclose()


def _never_called() -> int:
    raise AssertionError("a shadow's delivery never makes a dead letter: its refusals are counted as lost")


class _CountingRefusals:
    """A shadow's sink: what ``sink`` refuses for good is handed to ``on_refused`` instead of raising."""

    def __init__(self, sink: Sink, on_refused: Callable[[Sequence[tuple[OutputRecord, str]]], None]) -> None:
        self.sink = sink
        self.on_refused = on_refused

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        return self._counted(await self.sink.send(records))

    async def _counted(self, acknowledged: Awaitable[None]) -> None:
        try:
            await acknowledged
        except OutputRefused as refused:
            self.on_refused(refused.refused)
