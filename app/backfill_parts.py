"""The parts of one backfill run, built from its checked ``Run`` (``app.backfill_args``) and the
config; ``app.backfill_run`` opens them in the order their dependencies run, runs them through
``streams.backfill.run.run_backfill`` and closes them in reverse order. In that order: the replay
(a consumer in no group, started, and the run's plan); the models, warmed up
(``app.backfill_models``); the sink (Kafka or files, and the shadow destination of a ``--models``
run) and what a checkpoint keeps of it; the checkpoint; the pipeline with its per-key state; the
state's warm-up; the progress bar. Each ``opened_*`` closes what it opened; the rest open nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.avro_outputs import register_outputs
from app.backfill_args import Run, shadow_target
from app.build import (
    FETCH_BYTES_PER_PARTITION,
    build_kafka_sink,
    build_pipeline,
    build_stateful_inputs,
    input_isolation,
)
from app.config import Config
from app.kafka_clients import Connection, Consumer, make_consumer
from app.progress_bar import ProgressBar
from app.state_warmup import warm_from_input
from app.topics import ensure_topics, partitions_of
from models.protocol import Runner
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.file_sink import FileSink, FileState
from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CommandLineError, TopicMissingError
from streams.flow.pipeline import Pipeline, PipelineTopics, Sink
from streams.flow.roles import Roles
from streams.flow.scored_groups import ScoredGroupWatcher
from streams.flow.shadow import Shadow
from streams.kafka.replay import ReplaySource, plan_replay, start_consumer, stop_consumer
from streams.records import OutputRecord
from streams.source import Source


@dataclass(frozen=True)
class Replay:
    """A replay's consumer (started, in no group) and the plan it reads."""

    consumer: Consumer
    plan: ReplayPlan

    def source(self, checkpoint: Checkpoint) -> ReplaySource:
        """What is left of the plan, from the checkpoint's position."""
        return ReplaySource(self.consumer, checkpoint.plan, checkpoint.position)


@asynccontextmanager
async def opened_replay(config: Config, conn: Connection, run: Run) -> AsyncIterator[Replay]:
    """The replay's consumer, started, and the run's plan: a resumed run's, or a new one's made now."""
    p = run.pipeline
    # No group: the backfill never touches the live worker's committed offsets.
    consumer = make_consumer(
        conn, group_id=None, max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION, isolation_level=input_isolation(p)
    )
    await start_consumer(consumer)
    try:
        plan = run.checkpoint.plan if run.checkpoint is not None else await _new_plan(config, conn, consumer, run)
        yield Replay(consumer, plan)
    finally:
        await stop_consumer(consumer)


async def _new_plan(config: Config, conn: Connection, consumer: Consumer, run: Run) -> ReplayPlan:
    """A new run's plan: every partition of the pipeline's input topics up to its end offset now,
    from its beginning or ``--from-timestamp``; of those, this part's."""
    p = run.pipeline
    partitions = {t: await partitions_of(conn, t) for t in p.input_topics}
    try:
        plan = await plan_replay(consumer, partitions, from_timestamp_ms=run.from_timestamp_ms)
    except TopicMissingError as exc:
        raise TopicMissingError(
            f"pipeline {p.name}: {exc} on {config.bootstrap_servers}, nothing to replay: "
            f"check its input_topics in {config.path}"
        ) from None
    k, n = run.part
    mine = sorted(plan.end)[k - 1 :: n]  # several processes split one run's partitions
    return type(plan)({tp: plan.start[tp] for tp in mine}, {tp: plan.end[tp] for tp in mine})


@dataclass(frozen=True)
class BackfillSink:
    """Where the outputs go, opened; ``state`` commits them and returns what a checkpoint keeps
    to resume there (a file sink's lengths and parts; None for Kafka, which keeps nothing).
    ``shadow``: where the other models of a ``--models`` run write, the same way."""

    sink: Sink
    topics: PipelineTopics
    state: Callable[[], dict[str, Any] | None]
    shadow: BackfillSink | None = None


def _no_sink_state() -> None:
    return None


@asynccontextmanager
async def opened_sink(config: Config, conn: Connection, run: Run) -> AsyncIterator[BackfillSink]:
    """Kafka (its topics ensured, the producer started) or files (opened, cut back to a resumed checkpoint)."""
    p, target = run.pipeline, run.sink
    shadow = shadow_target(target) if run.candidates else None
    if target.kind == "kafka":
        outputs = [target.target, p.dead_letter_topic, *([shadow.target] if shadow else [])]
        await ensure_topics(conn, outputs, create=config.app.create_topics, partitions=config.app.topic_partitions)
        # Avro outputs: the schema registered under the target topic's subject (files stay JSON).
        avro = await register_outputs(config, p, target.target, emit_features=run.emit_features)
        kafka_sink = await build_kafka_sink(conn, outputs, "backfill")
        await kafka_sink.start()
        try:
            # The candidates' outputs share the producer: one more topic, not one more client.
            shadows = (
                BackfillSink(kafka_sink, PipelineTopics(shadow.target, p.dead_letter_topic), _no_sink_state)
                if shadow
                else None
            )
            topics = PipelineTopics(output=target.target, dead_letter=p.dead_letter_topic, avro=avro)
            yield BackfillSink(kafka_sink, topics, _no_sink_state, shadows)
        finally:
            await kafka_sink.stop()
        return
    checkpoint = run.checkpoint
    with _file_sink(run, str(target), target.target, checkpoint.sink if checkpoint else None) as file_sink:
        if shadow is None:
            yield file_sink
            return
        saved = checkpoint.shadow_sink if checkpoint else None
        with _file_sink(run, str(shadow), shadow.target, saved) as shadow_sink:
            yield BackfillSink(file_sink.sink, file_sink.topics, file_sink.state, shadow_sink)


@contextmanager
def _file_sink(run: Run, name: str, path: str, saved: dict[str, Any] | None) -> Iterator[BackfillSink]:
    """A file sink, opened (cut back to ``saved``, a resumed checkpoint's state of it), closed on exit."""
    state = FileState.from_json(saved) if saved is not None else None
    try:
        file_sink = FileSink(Path(path), writer=run.id, part=run.part, resume=state)
    except OSError as exc:
        raise CommandLineError(f"sink {name}: {exc.strerror}: {exc.filename}") from None
    try:
        yield BackfillSink(file_sink, file_sink.topics, lambda: file_sink.commit().to_json())
    finally:
        file_sink.close()


def start_checkpoint(run: Run, plan: ReplayPlan, sink: BackfillSink) -> Checkpoint:
    """The resumed run's checkpoint, or a new run's, saved before any output: what it runs, its plan."""
    if run.checkpoint is not None:
        return run.checkpoint
    k, n = run.part
    recorded: dict[str, Any] = {
        "id": run.id,
        "pipeline": run.pipeline.name,
        "model": run.model,
        "sink": str(run.sink),
        "part": [k, n],
        "emit_features": run.emit_features,
    }
    if run.candidates:  # recorded only when given, so a one-model run's checkpoint stays as it was
        recorded["models"] = list(run.models)
    if run.labels is not None:
        recorded["labels"] = run.labels
    shadow_state = sink.shadow.state() if sink.shadow is not None else None
    checkpoint = Checkpoint(run.path, recorded, plan, sink=sink.state(), shadow_sink=shadow_state)
    checkpoint.save()
    return checkpoint


def announce(run: Run, checkpoint: Checkpoint) -> None:
    """What the run replays, and its id: on stderr whatever the log level, since the run id is
    what ``--resume`` needs after a crash."""
    k, n = run.part
    if checkpoint.done:
        print(f"backfill {run.id} part {k}/{n} already finished", file=sys.stderr)
    others = f" (other models -> {shadow_target(run.sink)})" if run.candidates else ""
    print(
        f"backfill {run.id} (part {k}/{n}): {checkpoint.plan.remaining(checkpoint.position)} events in "
        f"{len(checkpoint.plan.end)} partitions of {', '.join(run.pipeline.input_topics)} -> {run.sink}{others}; "
        f"resume with --resume {run.id}",
        file=sys.stderr,
        flush=True,
    )


class CrashAfterCheckpoints:
    """Test hook, ``SLUICE_TEST_CRASH_AFTER_CHECKPOINTS=N``: checkpoint after every batch, and
    once N checkpoints are saved, hand the next batch to the sink and kill this process with
    SIGKILL, so the outputs written after the last checkpoint are on disk but not counted.
    Tests that interrupt a backfill do it here, at a known point, never by racing it."""

    def __init__(self, sink: Sink, after: int) -> None:
        self.sink = sink
        self.after = after
        self.saved = 0

    def checkpointed(self, checkpoint: Checkpoint) -> None:
        self.saved += 1

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        acknowledged = await self.sink.send(records)
        if self.saved >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return acknowledged


def crash_hook(run: Run, sink: BackfillSink) -> CrashAfterCheckpoints | None:
    return CrashAfterCheckpoints(sink.sink, run.crash_after) if run.crash_after else None


@contextmanager
def opened_pipeline(
    run: Run,
    runner: Runner | Roles,
    scored_to: Sink,
    topics: PipelineTopics,
    shadows: Sequence[Shadow] = (),
    watchers: Sequence[ScoredGroupWatcher] = (),
) -> Iterator[Pipeline]:
    """The run's pipeline in backfill mode, with its own per-key state (empty: rebuilt by the
    run), whose store is closed on exit (a RocksDB store's folder of its own is removed); the
    ``shadows`` and ``watchers`` are offered every group the champion scored."""
    p = run.pipeline
    state = build_stateful_inputs(p, "backfill")
    try:
        pipeline = build_pipeline(
            p,
            runner,
            scored_to,
            "backfill",
            topics=topics,
            emit_features=run.emit_features,
            state=state,
            shadows=shadows,
        )
        pipeline.watchers.extend(watchers)
        yield pipeline
    finally:
        if state is not None:
            state.close()


async def warm_up(
    conn: Connection, pipeline: Pipeline, checkpoint: Checkpoint, wrap: Callable[[Source], Source] = lambda s: s
) -> None:
    """Started past the beginning (``--from-timestamp``, a resume): the state of what came before first
    (``wrap``: decoded by schema, when the pipeline's events are)."""
    await warm_from_input(
        conn,
        pipeline,
        {p: checkpoint.position.get(p, at) for p, at in checkpoint.plan.start.items()},
        say=lambda line: print(line, file=sys.stderr, flush=True),
        wrap=wrap,
    )


def checkpoint_every_s(run: Run) -> float:
    """After every batch under the crash hook; every 10 s to Parquet (a part is closed at each
    checkpoint: that keeps parts large enough to read fast); otherwise every second."""
    if run.crash_after:
        return 0.0
    return 10.0 if run.sink.kind == "file" and Path(run.sink.target).suffix == ".parquet" else 1.0


def events_done(checkpoint: Checkpoint) -> int:
    return checkpoint.plan.total - checkpoint.plan.remaining(checkpoint.position)


def progress_bar(run: Run, checkpoint: Checkpoint) -> ProgressBar:
    bar = ProgressBar(checkpoint.plan.total, f"backfill {run.id}")
    bar.update(events_done(checkpoint))
    return bar
