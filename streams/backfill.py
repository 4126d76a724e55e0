"""Backfill: replay history through the live pipeline's code in throughput mode.

The same ``Pipeline`` (decode, runner, encode, dead letters) and the same ``Batcher``
(with no latency budget: the batch sizes with the most events per second) as the live
worker; only the source (a bounded replay) and the sink differ. Progress is checkpointed
after outputs are acknowledged, so a resumed run continues with no gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.batcher import Batch, Batcher
from streams.kafka_source import next_offsets
from streams.pipeline import Pipeline, Scored
from streams.replay import ReplayPlan, replay

MAX_IN_FLIGHT = 4


@dataclass
class Checkpoint:
    """What a run is and how far it got; written atomically as JSON."""

    path: Path
    run: dict[str, Any]
    plan: ReplayPlan
    position: dict[TopicPartition, int] = field(default_factory=dict)
    done: bool = False

    def save(self) -> None:
        data = {
            "run": self.run,
            "plan": self.plan.to_json(),
            "position": [[tp.topic, tp.partition, at] for tp, at in sorted(self.position.items())],
            "done": self.done,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        data = json.loads(path.read_text())
        position = {TopicPartition(t, p): at for t, p, at in data["position"]}
        return cls(path, data["run"], ReplayPlan.from_json(data["plan"]), position, data["done"])


@dataclass
class BackfillSummary:
    events: int = 0
    scored: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def run_backfill(
    consumer: AIOKafkaConsumer,
    pipeline: Pipeline,
    batcher: Batcher,
    checkpoint: Checkpoint,
    *,
    progress: Callable[[int, int], None] = lambda done, total: None,
    checkpoint_every_s: float = 1.0,
) -> BackfillSummary:
    """Score every record of the plan not yet checkpointed; returns when all are acknowledged."""
    plan = checkpoint.plan
    total = plan.total
    summary = BackfillSummary()
    in_flight: list[tuple[list[Any], Any, int, int]] = []
    last_save = time.monotonic()
    started = time.perf_counter()

    async def settle(keep: int) -> None:
        nonlocal last_save
        while len(in_flight) > keep:
            records, acknowledged, scored, dead = in_flight.pop(0)
            await acknowledged
            checkpoint.position.update(next_offsets(records))
            summary.events += len(records)
            summary.scored += scored
            summary.dead_lettered += dead
            progress(total - plan.remaining(checkpoint.position), total)
            if time.monotonic() - last_save >= checkpoint_every_s:
                checkpoint.save()
                last_save = time.monotonic()

    max_records = 4 * batcher.policy.max_batch_size
    # Two stages overlap: while one batch is scored (the model runs in its own thread), the
    # event loop decodes the next one.
    scoring: tuple[Batch, asyncio.Task[Scored], float] | None = None

    async def finish_scoring() -> None:
        nonlocal scoring
        if scoring is None:
            return
        batch, task, took = scoring
        scoring = None
        scored = await task
        acknowledged = await pipeline.emit(scored)
        batcher.cost.observe(len(batch), time.perf_counter() - took)
        in_flight.append(
            (batch.records, asyncio.ensure_future(acknowledged), scored.outcome.scored, scored.outcome.dead_lettered)
        )
        await settle(MAX_IN_FLIGHT)

    async for records in replay(consumer, plan, checkpoint.position, max_records=max_records):
        batcher.add(records, 0)
        while len(batcher):
            batch = batcher.take(batcher.plan(0), 0)
            took = time.perf_counter()
            decoded = pipeline.decode(batch.records)
            await finish_scoring()
            scoring = (batch, asyncio.ensure_future(pipeline.finish(batch.records, decoded)), took)
    await finish_scoring()
    await settle(0)
    checkpoint.done = True
    checkpoint.save()
    summary.seconds = time.perf_counter() - started
    return summary
