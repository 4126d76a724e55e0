"""Backfill: replay history through the live pipeline's code in throughput mode.

The same ``Driver``, ``Pipeline`` (decode, runner, encode, dead letters) and ``Batcher``
(with no latency budget: the batch sizes with the most events per second) as the live
worker; only the source (a bounded replay, ``streams.kafka.replay.ReplaySource``) and the progress differ: a
checkpoint (``streams.backfill.checkpoint``) saved after outputs are acknowledged, so a resumed run
continues with no gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.backfill.checkpoint import Checkpoint
from streams.flow.batcher import Batcher
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline
from streams.records import SourceRecord
from streams.source import Source, next_offsets


@dataclass
class BackfillSummary:
    events: int = 0
    scored: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class CheckpointProgress:
    """The backfill's ``streams.source.Progress``: a checkpoint counts exactly the outputs
    acknowledged before it. The driver commits with nothing in flight (``needs_quiet``); then
    ``commit_sink`` makes the sink's outputs durable and returns what the sink needs to resume
    there (see ``FileSink.commit``), and the checkpoint is written. Every ``every_s`` seconds;
    with 0, after every acknowledged batch. ``before_commit`` runs first: a run with shadows
    waits there until they scored every batch offered so far, so a checkpoint never counts an
    event some model has not scored."""

    needs_quiet = True

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        every_s: float,
        commit_sink: Callable[[], dict[str, Any] | None],
        on_checkpoint: Callable[[Checkpoint], None],
        on_advance: Callable[[int, int], None],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.before_commit = before_commit
        self.every_s = every_s
        self.commit_sink = commit_sink
        self.on_checkpoint = on_checkpoint
        self.on_advance = on_advance  # (events done, events in the plan): a progress bar
        self.summary = BackfillSummary()
        self._news = asyncio.Event()

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        self.checkpoint.position.update(next_offsets(records))
        self.summary.events += len(records)
        self.summary.scored += scored
        self.summary.dead_lettered += dead_lettered
        plan = self.checkpoint.plan
        self.on_advance(plan.total - plan.remaining(self.checkpoint.position), plan.total)
        self._news.set()

    async def wait_until_due(self) -> None:
        if self.every_s > 0:
            await asyncio.sleep(self.every_s)
        await self._news.wait()  # nothing new since the last checkpoint: nothing to save
        self._news.clear()

    async def commit(self, *, final: bool = False) -> None:
        if self.before_commit is not None:
            await self.before_commit()
        self.checkpoint.sink = self.commit_sink()
        self.checkpoint.done = final
        self.checkpoint.save()
        self.on_checkpoint(self.checkpoint)


async def run_backfill(
    source: Source,
    pipeline: Pipeline,
    batcher: Batcher,
    checkpoint: Checkpoint,
    *,
    on_advance: Callable[[int, int], None] = lambda done, total: None,
    checkpoint_every_s: float = 1.0,
    commit_sink: Callable[[], dict[str, Any] | None] = lambda: None,
    on_checkpoint: Callable[[Checkpoint], None] = lambda checkpoint: None,
    before_checkpoint: Callable[[], Awaitable[None]] | None = None,
) -> BackfillSummary:
    """Score every record ``source`` (a bounded replay of the checkpoint's plan from its position)
    hands out; returns when all are acknowledged and the final checkpoint (``done``) is saved.
    ``before_checkpoint`` is awaited before each save (between two batches), ``on_checkpoint``
    called after it."""
    saving = CheckpointProgress(
        checkpoint,
        every_s=checkpoint_every_s,
        commit_sink=commit_sink,
        on_checkpoint=on_checkpoint,
        on_advance=on_advance,
        before_commit=before_checkpoint,
    )
    driver = Driver(source, pipeline, batcher, saving, on_model_down="raise")
    started = time.perf_counter()
    await driver.run()
    saving.summary.seconds = time.perf_counter() - started
    return saving.summary


async def warm_state(source: Source, pipeline: Pipeline, *, batch_size: int = 4096) -> int:
    """Rebuild a stateful pipeline's per-key state from the records ``source`` hands out (the
    history before where a run starts: ``--from-timestamp``, or a resumed run's position),
    without scoring or emitting anything; returns how many records were read."""
    stateful = pipeline.stateful
    if stateful is None:
        return 0
    records_read = 0
    while not source.exhausted:
        records = await source.next_batch(batch_size)
        if records:
            stateful.commit(pipeline.featurize(records, pipeline.decode(records)))
            records_read += len(records)
    return records_read
