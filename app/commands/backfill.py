"""``sluice backfill``: score a pipeline's history through the live pipeline's code, then exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from faust.cli import AppCommand, option

from app.addresses import is_topic
from app.build import (
    FETCH_BYTES_PER_PARTITION,
    build_batcher,
    build_kafka_sink,
    build_pipeline,
    build_runner,
    input_isolation,
    load_checked_model,
    settle_garbage_collector,
)
from app.config import PipelineConfig
from app.crash_hooks import count_from_env
from app.kafka_clients import connection, make_consumer
from app.main import app, config
from app.model_refs import model_spec
from app.progress_bar import ProgressBar
from app.state_warmup import warm_from_input
from app.topics import check_broker, ensure_topics, partitions_of
from models.registry import DEMO_MODELS
from streams.backfill.checkpoint import MAX_PARTS, Checkpoint, checkpoint_path
from streams.backfill.file_sink import FileSink, FileState, check_resume, check_target
from streams.backfill.run import BackfillSummary, run_backfill
from streams.errors import (
    CheckpointError,
    CommandLineError,
    FileSinkError,
    ModelError,
    TopicMissingError,
    exit_on_operator_error,
)
from streams.flow.pipeline import PipelineTopics, Sink
from streams.kafka.replay import ReplaySource, plan_replay, start_consumer, stop_consumer
from streams.kafka.sink import KafkaSink
from streams.records import OutputRecord

DEFAULT_STATE = Path.home() / ".local" / "state" / "sluice" / "backfill"
CRASH_HOOK_ENV = "SLUICE_TEST_CRASH_AFTER_CHECKPOINTS"


# The last millisecond datetime can hold (9999-12-31T23:59:59.999Z); Kafka reads -1 as "the latest offset".
MAX_TIMESTAMP_MS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_EXPECTED = (
    f"expected milliseconds since the epoch (ASCII digits, 0 to {MAX_TIMESTAMP_MS}) or an ISO 8601 time "
    "from 1970-01-01 to 9999-12-31 (local time unless it gives an offset)"
)


def parse_timestamp(text: str | None) -> int | None:
    """``--from-timestamp``: milliseconds since the epoch in ASCII digits, or an ISO 8601 time
    (local unless it gives an offset), read to the millisecond; None when not given."""
    if text is None:
        return None
    ms: int | None = None
    if re.fullmatch(r"[0-9]{1,16}", text):  # str.isdigit() also takes "²", which int() refuses
        ms = int(text)
    elif text.isascii():
        try:
            ms = (datetime.fromisoformat(text).astimezone(UTC) - EPOCH) // timedelta(milliseconds=1)
        except (ValueError, OverflowError, OSError):  # not ISO 8601, or out of datetime's range
            ms = None
    if ms is None or not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise CommandLineError(f"--from-timestamp {text!r}: {TIMESTAMP_EXPECTED}")
    return ms


def parse_part(text: str) -> tuple[int, int]:
    """``--part K/N``: ASCII digits (N names the checkpoint file), 1 <= K <= N <= MAX_PARTS."""
    match = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]) <= MAX_PARTS:
        raise CommandLineError(f"--part {text!r}: expected K/N (ASCII digits), 1 <= K <= N <= {MAX_PARTS:,}, e.g. 1/3")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class SinkTarget:
    """Where a run's outputs go: ``kafka`` and a topic, or ``file`` and an absolute path."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_sink(text: str, where: str = "--sink") -> SinkTarget:
    """``kafka:TOPIC`` or ``file:PATH.jsonl|.parquet``, checked before anything is opened; the
    same rules for the command line and for the sink a checkpoint names (``where`` says which)."""
    kind, colon, target = text.partition(":")
    if kind == "kafka" and colon:
        if not is_topic(target):
            raise CommandLineError(
                f"{where} {text!r}: {target!r} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            )
        return SinkTarget("kafka", target)
    if kind == "file" and colon:
        if not target or "\0" in target:
            raise CommandLineError(f"{where} {text!r}: give a file path after 'file:'")
        path = Path(os.path.abspath(os.path.expanduser(target)))
        try:
            check_target(path)
        except (FileSinkError, OSError) as exc:
            raise CommandLineError(f"{where} {text!r}: {exc}") from None
        return SinkTarget("file", str(path))
    raise CommandLineError(f"{where} {text!r}: expected kafka:TOPIC, file:PATH.jsonl or file:PATH.parquet")


def pipeline_named(name: str, where: str = "--pipeline") -> PipelineConfig:
    names = [p.name for p in config.pipelines]
    if name not in names:
        raise CommandLineError(f"{where} {name!r}: no such pipeline in {config.path}; pipelines: {', '.join(names)}")
    return config.pipeline(name)


def run_checkpoint(run_id: str, part: tuple[int, int], state_dir: Path, option: str) -> Path:
    try:
        return checkpoint_path(state_dir, run_id, part)
    except CheckpointError as exc:
        raise CommandLineError(f"{option} {exc}") from None


@dataclass(frozen=True)
class Run:
    """A run to start or continue, every part of it checked."""

    id: str
    pipeline: PipelineConfig
    model: str | None
    sink: SinkTarget
    checkpoint: Checkpoint | None  # None: a new run, checkpointed once its plan is made
    path: Path


def new_run(
    pipeline_name: str | None, sink_spec: str | None, run_id: str | None
) -> tuple[str, PipelineConfig, SinkTarget]:
    p = pipeline_named(pipeline_name) if pipeline_name else config.pipelines[0]
    sink = parse_sink(sink_spec or f"kafka:{p.backfill_topic}")
    run_id = run_id or f"{p.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    return run_id, p, sink


def resumed_run(
    resume: str,
    part: tuple[int, int],
    state_dir: Path,
    *,
    pipeline_name: str | None,
    model: str | None,
    sink_spec: str | None,
    from_timestamp: str | None,
    run_id: str | None,
) -> Run:
    """The run a checkpoint describes, checked with the command line's own rules: whoever could
    write to the state folder wrote its pipeline, model and sink."""
    k, n = part
    path = run_checkpoint(resume, part, state_dir, "--resume")
    if not path.is_file():
        raise CommandLineError(f"--resume {resume!r}: no checkpoint for part {k}/{n} in {state_dir}")
    checkpoint = Checkpoint.load(path)
    where = f"checkpoint {path}:"
    run = checkpoint.run
    if run["id"] != resume or run["part"] != [k, n]:
        raise CommandLineError(f"{where} it is for run {run['id']!r} part {run['part']}, not {resume!r} part {k}/{n}")
    p = pipeline_named(run["pipeline"], f"{where} pipeline")
    sink = parse_sink(run["sink"], f"{where} sink")
    strays = sorted({tp.topic for tp in checkpoint.plan.end} - set(p.input_topics))
    if strays:
        raise CommandLineError(f"{where} it replays {', '.join(strays)}, which pipeline {p.name} does not read")
    if checkpoint.sink is not None and sink.kind != "file":
        raise CommandLineError(f"{where} key 'sink': a Kafka sink keeps no state")
    if checkpoint.sink is None and sink.kind == "file":
        raise CommandLineError(
            f"{where} key 'sink' has value None: expected the lengths of the files sink {sink} writes"
        )
    try:
        state = FileState.from_json(checkpoint.sink) if checkpoint.sink is not None else None
    except FileSinkError as exc:
        raise CommandLineError(f"{where} key 'sink': {exc}") from None
    # A model file or module only the checkpoint names is never loaded: loading runs code (a
    # module's import, a pickle in an archive), and whoever wrote the checkpoint chose it. The
    # checkpoint's model is compared with the command line's; a demo name or the config's model
    # (null) names no file. "-m" is the command line's own choice, as when the run started.
    recorded_model = run["model"]
    if recorded_model is not None:
        try:
            model_spec(recorded_model, p)  # its form only: nothing is opened or imported
        except CommandLineError as exc:
            raise CommandLineError(f"{where} model: {exc}") from None
    named_by_file = recorded_model is not None and recorded_model not in DEMO_MODELS
    # The same for a file sink: a resume appends to its files and first cuts them back to the
    # lengths the checkpoint counts, so it writes only where the command line says again.
    only_named_here = {
        "--model": "a resume loads a model file or module only when the command line names it",
        "--sink": "a resume writes to a file sink, and cuts it back to the checkpoint, only when the command line "
        "names it",
    }
    must_repeat = {"--model": named_by_file, "--sink": sink.kind == "file"}
    given = {
        "--pipeline": (pipeline_name, p.name),
        "--model": (model, recorded_model),
        "--sink": (str(parse_sink(sink_spec)) if sink_spec else None, str(sink)),
        "--run-id": (run_id, resume),
    }
    for flag, (value, recorded) in given.items():
        if value is not None and value != recorded:
            fix = f"give {flag} {recorded!r} ({only_named_here[flag]})" if must_repeat.get(flag) else f"drop {flag}"
            raise CommandLineError(
                f"{flag} {value!r}: run {resume} was started with {recorded!r}, and --resume continues it "
                f"as it started: {fix}"
            )
    for flag, (value, recorded) in given.items():
        if must_repeat.get(flag) and value is None:
            what = "model you mean to run" if flag == "--model" else "sink you mean to write to"
            raise CommandLineError(
                f"{where} {flag[2:]}: run {resume} was started with {flag} {recorded!r}; {only_named_here[flag]}: "
                f"repeat {flag} {recorded!r} if it is the {what}"
            )
    if state is not None:  # every file it names checked before the broker is reached, and before any is cut
        try:
            check_resume(Path(sink.target), state, writer=resume, part=part)
        except FileSinkError as exc:
            raise CommandLineError(f"{where} key 'sink': {exc}") from None
    if from_timestamp is not None:
        raise CommandLineError(f"--from-timestamp: run {resume} keeps its start offsets; drop --from-timestamp")
    return Run(resume, p, recorded_model, sink, checkpoint, path)


def no_sink_state() -> None:
    return None


def file_state(sink: FileSink) -> Callable[[], dict[str, Any]]:
    return lambda: sink.commit().to_json()


class _CrashAfterCheckpoints:
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


def crash_hook() -> int | None:
    return count_from_env(CRASH_HOOK_ENV, "checkpoints")


async def backfill_run(
    pipeline_name: str | None,
    model: str | None,
    sink_spec: str | None,
    from_timestamp: str | None,
    resume: str | None,
    run_id: str | None,
    part: str,
    state_dir: Path,
    emit_features: bool = False,
) -> BackfillSummary:
    # Everything the operator gave is checked before the broker is reached or a file written.
    k, n = parse_part(part)
    crash_after = crash_hook()
    if resume:
        run = resumed_run(
            resume,
            (k, n),
            state_dir,
            pipeline_name=pipeline_name,
            model=model,
            sink_spec=sink_spec,
            from_timestamp=from_timestamp,
            run_id=run_id,
        )
        start_ms = None
    else:
        start_ms = parse_timestamp(from_timestamp)
        new_id, p, sink_target = new_run(pipeline_name, sink_spec, run_id)
        path = run_checkpoint(new_id, (k, n), state_dir, "--run-id")
        if path.exists():
            raise CommandLineError(
                f"--run-id {new_id!r}: part {k}/{n} of that run is already checkpointed in {state_dir}; "
                f"continue it with --resume {new_id}, or name a new run"
            )
        run = Run(new_id, p, model, sink_target, None, path)
    p, sink_target = run.pipeline, run.sink
    if run.checkpoint is not None:
        emit_features = emit_features or bool(run.checkpoint.run.get("emit_features"))  # as the run began
    if emit_features and p.state is None:
        raise CommandLineError(
            f"--emit-features: pipeline {p.name} has no per-key features "
            f"(no [pipelines.{p.name}.state] in {config.path})"
        )
    try:
        spec = model_spec(run.model, p)
    except CommandLineError as exc:
        if run.checkpoint is None:
            raise
        raise CommandLineError(f"checkpoint {run.path}: model: {exc}") from None
    try:
        await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandLineError(f"--state-dir {state_dir}: {exc.strerror}") from None

    conn = connection(config)
    await check_broker(conn)
    # No group: the backfill never touches the live worker's committed offsets.
    consumer = make_consumer(
        conn, group_id=None, max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION, isolation_level=input_isolation(p)
    )
    await start_consumer(consumer)
    try:
        plan = run.checkpoint.plan if run.checkpoint is not None else None
        if plan is None:
            partitions = {t: await partitions_of(conn, t) for t in p.input_topics}
            try:
                plan = await plan_replay(consumer, partitions, from_timestamp_ms=start_ms)
            except TopicMissingError as exc:
                raise TopicMissingError(
                    f"pipeline {p.name}: {exc} on {config.bootstrap_servers}, nothing to replay: "
                    f"check its input_topics in {config.path}"
                ) from None
            mine = sorted(plan.end)[k - 1 :: n]  # several processes split one run's partitions
            plan = type(plan)({tp: plan.start[tp] for tp in mine}, {tp: plan.end[tp] for tp in mine})
        loaded = await asyncio.to_thread(load_checked_model, p, spec)
        runner, cost = await asyncio.to_thread(build_runner, config, p, loaded)
        settle_garbage_collector()  # as the worker does: full collections over torch's heap cost more than decoding
        kafka_sink: KafkaSink | None = None
        file_sink: FileSink | None = None
        sink: Sink
        commit_sink: Callable[[], dict[str, Any] | None] = no_sink_state
        if sink_target.kind == "kafka":
            await ensure_topics(
                conn,
                [sink_target.target, p.dead_letter_topic],
                create=config.app.create_topics,
                partitions=config.app.topic_partitions,
            )
            kafka_sink = await build_kafka_sink(conn, [sink_target.target, p.dead_letter_topic], "backfill")
            await kafka_sink.start()
            sink = kafka_sink
            topics = PipelineTopics(output=sink_target.target, dead_letter=p.dead_letter_topic)
        else:
            saved = run.checkpoint.sink if run.checkpoint is not None else None
            state = FileState.from_json(saved) if saved is not None else None
            try:
                file_sink = FileSink(Path(sink_target.target), writer=run.id, part=(k, n), resume=state)
            except OSError as exc:
                raise CommandLineError(f"sink {sink_target}: {exc.strerror}: {exc.filename}") from None
            sink, topics = file_sink, file_sink.topics
            commit_sink = file_state(file_sink)
        hook = _CrashAfterCheckpoints(sink, crash_after) if crash_after else None
        pipeline = None
        try:
            checkpoint = run.checkpoint
            if checkpoint is None:
                recorded = {
                    "id": run.id,
                    "pipeline": p.name,
                    "model": run.model,
                    "sink": str(sink_target),
                    "part": [k, n],
                    "emit_features": emit_features,
                }
                checkpoint = Checkpoint(run.path, recorded, plan, sink=commit_sink())
                checkpoint.save()
            elif checkpoint.done:
                print(f"backfill {run.id} part {k}/{n} already finished", file=sys.stderr)
            # On stderr whatever the log level: the run id is what --resume needs after a crash.
            print(
                f"backfill {run.id} (part {k}/{n}): {checkpoint.plan.remaining(checkpoint.position)} events in "
                f"{len(checkpoint.plan.end)} partitions of {', '.join(p.input_topics)} -> {sink_target}; "
                f"resume with --resume {run.id}",
                file=sys.stderr,
                flush=True,
            )
            pipeline = build_pipeline(p, runner, hook or sink, "backfill", topics=topics, emit_features=emit_features)
            # Started past the beginning (--from-timestamp, a resume): the state of what came before first.
            await warm_from_input(
                conn,
                pipeline,
                {p: checkpoint.position.get(p, at) for p, at in checkpoint.plan.start.items()},
                say=lambda line: print(line, file=sys.stderr, flush=True),
            )
            batcher = build_batcher(p, cost, "backfill")
            bar = ProgressBar(checkpoint.plan.total, f"backfill {run.id}")
            bar.update(checkpoint.plan.total - checkpoint.plan.remaining(checkpoint.position))
            # A Parquet part is closed at each checkpoint: every 10 s keeps parts large enough to read fast.
            every_s = 0.0 if hook else (10.0 if Path(sink_target.target).suffix == ".parquet" else 1.0)
            summary = await run_backfill(
                ReplaySource(consumer, checkpoint.plan, checkpoint.position),
                pipeline,
                batcher,
                checkpoint,
                on_advance=lambda done, _total: bar.update(done),
                checkpoint_every_s=every_s if sink_target.kind == "file" or hook else 1.0,
                commit_sink=commit_sink,
                on_checkpoint=hook.checkpointed if hook else lambda _checkpoint: None,
            )
            bar.finish(checkpoint.plan.total - checkpoint.plan.remaining(checkpoint.position))
            return summary
        finally:
            if pipeline is not None and pipeline.stateful is not None:
                pipeline.stateful.step.store.close()  # a RocksDB store's folder of its own
            if kafka_sink is not None:
                await kafka_sink.stop()
            if file_sink is not None:
                file_sink.close()
            await runner.aclose()
    finally:
        await stop_consumer(consumer)


@app.command(
    option("--pipeline", "-p", default=None, help="Pipeline to backfill (default: the first in the config)."),
    option(
        "--model",
        "-m",
        default=None,
        help="Score with this model instead: demo name, .pt2, mod:Class=w.pt, or .ts (TorchScript is code: only "
        "where the pipeline's model has trust_torchscript = true in the config).",
    ),
    option("--sink", default=None, help="kafka:TOPIC (default: the pipeline's backfill_topic) or file:PATH."),
    option(
        "--from-timestamp",
        default=None,
        help="Start at this time (ISO 8601, or epoch ms in ASCII digits; 1970 to 9999), not offset 0.",
    ),
    option(
        "--resume",
        default=None,
        help="Continue the run with this id where it stopped (a run started with a model file or module needs "
        "the same --model again, and one to a file the same --sink file:PATH: a resume never loads or writes "
        "a file only its checkpoint names).",
    ),
    option("--run-id", default=None, help="Name the run: letters, digits, '.', '-', '_' (default: pipeline and time)."),
    option("--part", default="1/1", help="K/N: this process takes every Nth partition, starting at the Kth."),
    option("--state-dir", type=Path, default=DEFAULT_STATE, help="Where run checkpoints are kept."),
    option(
        "--emit-features",
        is_flag=True,
        default=False,
        help="Write each event's per-key features beside its prediction (a training set).",
    ),
)
async def backfill(
    self: AppCommand,
    pipeline: str | None,
    model: str | None,
    sink: str | None,
    from_timestamp: str | None,
    resume: str | None,
    run_id: str | None,
    part: str,
    state_dir: Path,
    emit_features: bool,
) -> None:
    """Replay a pipeline's input topics from the beginning through the same pipeline, then exit."""
    try:
        with exit_on_operator_error("backfill"):
            summary = await backfill_run(
                pipeline, model, sink, from_timestamp, resume, run_id, part, state_dir, emit_features
            )
    except ModelError as exc:
        if not exc.retriable:
            raise
        # Not the events' fault: dead-lettering history would be wrong. What is acknowledged is checkpointed.
        print(
            f"sluice backfill: {exc}\nfix the model, then continue with the --resume id printed above", file=sys.stderr
        )
        raise SystemExit(1) from None
    print(
        f"backfill done: {summary.events} events, {summary.scored} predictions, {summary.dead_lettered} "
        f"dead-lettered, {summary.seconds:.1f}s, {summary.rate:,.0f} events/s",
        file=sys.stderr,
    )
