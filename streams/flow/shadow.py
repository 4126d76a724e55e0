"""A shadow model: scored on the very batches the serving models scored, never acted on.

The pipeline offers each scored batch (its events' inputs, with the per-key features they were
served with, and the served predictions) to every shadow. A shadow has its own bounded queue,
task and model (live, in a process of its own: ``models.process_runner``), so it never delays or
changes the served outputs: live, when its queue
is full it skips the whole batch and counts it (``wait=False``); a backfill, which has no
budget to keep, waits for room instead so every event is scored by every model (``wait=True``).

Its predictions go to the shadow topic, keyed like the served outputs, each with the shadow's
name and version and the served model's score beside it (``streams.flow.shadow_records``),
written where the model runs: by the shadow's own process when its runner records them itself
(``RecordingRunner``: the worker then only hands the batch over), else on this event loop.
They are evidence, not decisions: sent at least once while the worker runs, but not covered
by the input's commits or transactions (waiting for them would delay the champion), so a
crash may lose a few; their agreement with the served model is counted as they are scored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from models.protocol import Runner
from streams.errors import ModelTimeout
from streams.flow.breaker import timed
from streams.flow.delivery import Sink
from streams.flow.model_stats import Agreement, ModelStats
from streams.flow.scored_groups import OnScored, ScoredGroup
from streams.flow.shadow_gather import Gatherer
from streams.flow.shadow_records import ShadowRecords, checked, positions


class RecordingRunner(Protocol):
    """A runner that writes the shadow's records itself, where its model runs (a process of its
    own): handed a batch's inputs and what the records say beside each prediction, it returns the
    predictions and how many records it lost since it last said."""

    async def predict_with(self, inputs: Sequence[np.ndarray], extra: Any) -> tuple[np.ndarray, Any]: ...


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
        gather_s: float = 0.0,
        gather_rows: int = 4096,
        aside: RecordingRunner | None = None,
    ) -> None:
        self.runner = runner
        # Told each batch's predictions as they are made (a backfill's evaluation collects them).
        self.on_scored = on_scored
        self._timed = timed(runner, timeout_s)
        # Whether the served models have more events waiting (the driver's queue): set by whoever
        # runs the pipeline live; never busy by default.
        self.champion_busy: Callable[[], bool] = lambda: False
        # ``runner`` itself when it writes the records (its own process has the producer); else
        # they are written here, through a delivery of their own on the pipeline's sink.
        self.aside = aside
        self._records = ShadowRecords(
            sink, topic=topic, pipeline=pipeline, name=runner.name, key_by_position=key_by_position
        )
        self._lost_aside = 0
        self.topic = topic
        self.stats = stats
        if stats.agreement is None:
            stats.agreement = Agreement(threshold)
        self.wait = wait
        self._queue: asyncio.Queue[ScoredGroup | None] = asyncio.Queue(maxsize=max(1, queue_batches))
        # Live, the champion's batches are gathered into fewer, larger ones (streams.flow.shadow_gather).
        self._gathered = Gatherer(self._ready, gather_s=gather_s, max_rows=gather_rows)
        self._task: asyncio.Task[None] | None = None

    @property
    def lost_outputs(self) -> int:
        """Records of this shadow the shadow topic never got (refused, or undeliverable)."""
        return self._records.lost_outputs + self._lost_aside

    @property
    def name(self) -> str:
        return self.runner.name

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sluice-shadow-{self.runner.name}")

    async def offer(self, group: ScoredGroup) -> None:
        """Queue a scored batch for the shadow. Live, batches are gathered first (``gather_s``), and a
        gathered batch that finds the queue full is skipped (counted) instead of waiting."""
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
        self._gathered.offer(group)

    def _ready(self, group: ScoredGroup) -> None:
        try:
            self._queue.put_nowait(group)
        except asyncio.QueueFull:
            self.stats.skipped(len(group.rows))
            self._records.log_now(
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
                self._records.log_now("shadow %s v%s lost a batch: %r", self.runner.name, self.runner.version, exc)

    async def _score(self, job: ScoredGroup) -> None:
        started = time.perf_counter()
        try:
            if self.aside is not None:
                extra = (positions(job.records, job.rows), job.ids, job.served, job.served_name, job.served_version)
                raw, lost = await self.aside.predict_with(job.inputs, extra)
                self._lost_aside += int(lost or 0)
            else:
                raw = await self._timed.predict(job.inputs)
            predictions = checked(raw, len(job.rows))
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is evidence, never the pipeline's
            self.stats.failed(timed_out=isinstance(exc, ModelTimeout))
            self._records.log_now(
                "shadow %s v%s failed a batch (not retried): %s", self.runner.name, self.runner.version, exc
            )
            return
        self.stats.scored(predictions, time.perf_counter() - started)
        if self.stats.agreement is not None:
            self.stats.agreement.observe(predictions, job.served)
        if self.on_scored is not None:
            self.on_scored(job.records, job.rows, job.ids, predictions)
        if self.aside is None:
            await self._records.record(
                job.records,
                job.rows,
                job.ids,
                predictions,
                job.served,
                version=self.runner.version,
                served_name=job.served_name,
                served_version=job.served_version,
            )

    async def drain(self) -> None:
        """Score what is queued, then stop the task (a backfill's last batches; a worker's stop)."""
        self._gathered.flush()
        if self._task is None and self._queue.empty():
            return
        self.start()  # a gathered batch flushed just now is scored before the task stops
        await self._queue.put(None)
        task, self._task = self._task, None
        assert task is not None
        await task  # cancelling the caller (a stop's deadline) cancels the shadow, and is never swallowed

    async def aclose(self) -> None:
        await self.drain()
        await self.runner.aclose()
