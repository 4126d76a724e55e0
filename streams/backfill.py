"""Backfill: replay history through the live pipeline's code in throughput mode.

The same ``Pipeline`` (decode, runner, encode, dead letters) and the same ``Batcher``
(with no latency budget: the batch sizes with the most events per second) as the live
worker; only the source (a bounded replay) and the sink differ. Progress is checkpointed
after outputs are acknowledged, so a resumed run continues with no gap. Checkpoints live
in one folder, named by run ids that are plain names.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.batcher import IN_FLIGHT_BATCHES, QUEUED_BATCHES, Batch, Batcher
from streams.errors import CheckpointError
from streams.kafka_source import next_offsets
from streams.pipeline import Pipeline, Scored
from streams.replay import ReplayPlan, replay

RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


def checkpoint_path(state_dir: Path, run_id: str, part: tuple[int, int]) -> Path:
    """Where run ``run_id``'s process K of N keeps its checkpoint: always inside ``state_dir``."""
    if not RUN_ID.fullmatch(run_id):
        raise CheckpointError(
            f"{run_id!r} is not a plain name: use 1 to 100 letters, digits, '.', '-' or '_', not starting with '.'"
        )
    k, n = part
    return state_dir / f"{run_id}.part{k}of{n}.json"


def _expect(ok: bool, path: Path, key: str, value: object, expected: str) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise CheckpointError(f"checkpoint {path}: key {key!r} has value {shown}: expected {expected}")


@dataclass
class Checkpoint:
    """What a run is and how far it got; written atomically as JSON.

    ``sink`` is what the sink needs to resume exactly where the checkpoint counts (a file
    sink's lengths and closed parts; nothing for Kafka)."""

    path: Path
    run: dict[str, Any]
    plan: ReplayPlan
    position: dict[TopicPartition, int] = field(default_factory=dict)
    done: bool = False
    sink: dict[str, Any] | None = None

    def save(self) -> None:
        data = {
            "run": self.run,
            "plan": self.plan.to_json(),
            "position": [[tp.topic, tp.partition, at] for tp, at in sorted(self.position.items())],
            "done": self.done,
            "sink": self.sink,
        }
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as file:
            json.dump(data, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read and check a checkpoint: its shape and types, and positions inside its plan.

        What the run names (pipeline, model, sink) is the caller's to check, with the rules it
        applies to the command line: the file may come from anyone who could write there."""
        try:
            if path.stat().st_size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"checkpoint {path}: larger than {MAX_CHECKPOINT_BYTES} bytes")
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: not readable as JSON ({exc})") from None
        _expect(isinstance(data, dict), path, "", type(data).__name__, "an object")
        for key in ("run", "plan", "position", "done"):
            _expect(key in data, path, key, None, "present")
        run = data["run"]
        _expect(isinstance(run, dict), path, "run", run, "an object")
        for key in ("id", "pipeline", "sink"):
            _expect(isinstance(run.get(key), str) and bool(run[key]), path, f"run.{key}", run.get(key), "a string")
        _expect(
            run.get("model") is None or isinstance(run["model"], str),
            path,
            "run.model",
            run.get("model"),
            "a string or null",
        )
        part = run.get("part")
        _expect(
            isinstance(part, list) and len(part) == 2 and all(type(x) is int for x in part) and 1 <= part[0] <= part[1],
            path,
            "run.part",
            part,
            "[K, N] with 1 <= K <= N",
        )
        try:
            plan = ReplayPlan.from_json(data["plan"])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: key 'plan': {exc}") from None
        position: dict[TopicPartition, int] = {}
        entries = data["position"]
        _expect(isinstance(entries, list), path, "position", entries, "a list")
        for entry in entries:
            ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
            ok = ok and type(entry[1]) is int and type(entry[2]) is int
            tp = TopicPartition(entry[0], entry[1]) if ok else None
            ok = ok and tp in plan.end and plan.start[tp] <= entry[2] <= plan.end[tp]
            _expect(ok, path, "position", entry, "[topic, partition, offset] inside the plan")
            position[tp] = entry[2]
        _expect(type(data["done"]) is bool, path, "done", data["done"], "true or false")
        sink = data.get("sink")
        _expect(sink is None or isinstance(sink, dict), path, "sink", sink, "an object or null")
        return cls(path, run, plan, position, data["done"], sink)


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
    commit_sink: Callable[[], dict[str, Any] | None] = lambda: None,
    on_checkpoint: Callable[[Checkpoint], None] = lambda checkpoint: None,
) -> BackfillSummary:
    """Score every record of the plan not yet checkpointed; returns when all are acknowledged.

    A checkpoint counts exactly the outputs acknowledged before it: every batch in flight is
    awaited first, then ``commit_sink`` makes the sink's outputs durable and returns what the
    sink needs to resume there (see ``FileSink.commit``), then the checkpoint is written.
    ``on_checkpoint`` is called after each save."""
    plan = checkpoint.plan
    total = plan.total
    summary = BackfillSummary()
    in_flight: list[tuple[list[Any], Any, int, int]] = []
    last_save = time.monotonic()
    started = time.perf_counter()

    async def settle(keep: int) -> None:
        while len(in_flight) > keep:
            records, acknowledged, scored, dead = in_flight.pop(0)
            await acknowledged
            checkpoint.position.update(next_offsets(records))
            summary.events += len(records)
            summary.scored += scored
            summary.dead_lettered += dead
            progress(total - plan.remaining(checkpoint.position), total)

    async def save(*, done: bool = False) -> None:
        nonlocal last_save
        await settle(0)
        checkpoint.sink = commit_sink()
        checkpoint.done = done
        checkpoint.save()
        last_save = time.monotonic()
        on_checkpoint(checkpoint)

    max_records = QUEUED_BATCHES * batcher.policy.max_batch_size
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
        await settle(IN_FLIGHT_BATCHES)
        if time.monotonic() - last_save >= checkpoint_every_s:
            await save()

    async for records in replay(consumer, plan, checkpoint.position, max_records=max_records):
        batcher.add(records, 0)
        while len(batcher):
            batch = batcher.take(batcher.plan(0), 0)
            took = time.perf_counter()
            decoded = pipeline.decode(batch.records)
            await finish_scoring()
            scoring = (batch, asyncio.ensure_future(pipeline.finish(batch.records, decoded)), took)
    await finish_scoring()
    await save(done=True)
    summary.seconds = time.perf_counter() - started
    return summary
