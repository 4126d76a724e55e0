"""``sluice backfill``: score a pipeline's history through the live pipeline's code, then exit."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from faust.cli import AppCommand, option

from app.config import PipelineConfig
from app.errors import exit_on_operator_error
from app.kafka_clients import connection, make_consumer, make_producer
from app.main import app, config
from app.pipeline_service import build_runner, settle_garbage_collector
from app.progress import Progress
from app.topics import check_broker, ensure_topics, partitions_of
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from streams.backfill import BackfillSummary, Checkpoint, run_backfill
from streams.batcher import Batcher, BatchPolicy
from streams.file_sink import FileSink
from streams.isolation import ModelUnavailableError
from streams.kafka_sink import KafkaSink
from streams.pipeline import Pipeline, PipelineTopics, Sink
from streams.replay import TopicNotFoundError, plan_replay

DEFAULT_STATE = Path.home() / ".local" / "state" / "sluice" / "backfill"


class BackfillError(Exception):
    """Something the operator must fix; the message says what."""


def model_spec(ref: str | None, pipeline: PipelineConfig) -> ModelSpec:
    """``--model``: a demo name, an exported program (.pt2), a TorchScript file (.ts), or
    ``package.module:Class=weights.pt``; none means the pipeline's own model.

    A TorchScript file is code, so as for a model swap, the opt-in is the operator's, in the
    config: ``trust_torchscript = true`` on the pipeline's model. A flag would let whoever
    types the command (or wrote a checkpoint that a ``--resume`` reads) decide instead."""
    if not ref:
        return pipeline.model
    if ref in DEMO_MODELS:
        return ModelSpec(demo=ref)
    if ":" in ref and "=" in ref:
        cls, weights = ref.split("=", 1)
        return ModelSpec(module_class=cls, state_dict=Path(weights))
    if ref.endswith(".pt2"):
        return ModelSpec(exported=Path(ref))
    if ref.endswith(".ts"):
        if not pipeline.model.trust_torchscript:
            raise BackfillError(
                f"--model {ref!r}: a TorchScript file is code that runs when loaded; it is used only where "
                f"the config trusts it: trust_torchscript = true in [pipelines.{pipeline.name}.model]"
            )
        return ModelSpec(torchscript=Path(ref), trust_torchscript=True)
    raise BackfillError(
        f"--model {ref!r}: expected a demo model ({', '.join(DEMO_MODELS)}), a .pt2 or .ts file, "
        "or package.module:Class=weights.pt"
    )


def parse_timestamp(text: str | None) -> int | None:
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise BackfillError(f"--from-timestamp {text!r}: expected ISO 8601 or milliseconds since the epoch") from None


def parse_part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BackfillError(f"--part {text!r}: expected K/N, e.g. 1/3") from None
    if not 1 <= k <= n:
        raise BackfillError(f"--part {text!r}: K must be between 1 and N")
    return k, n


async def backfill_run(
    pipeline_name: str | None,
    model: str | None,
    sink_spec: str | None,
    from_timestamp: str | None,
    resume: str | None,
    run_id: str | None,
    part: str,
    state_dir: Path,
) -> BackfillSummary:
    k, n = parse_part(part)
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    conn = connection(config)
    await check_broker(conn)
    # No group: the backfill never touches the live worker's committed offsets.
    consumer = make_consumer(conn, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        if resume:
            path = state_dir / f"{resume}.part{k}of{n}.json"
            if not path.exists():
                raise BackfillError(f"no checkpoint for run {resume!r} part {k}/{n} in {state_dir}")
            checkpoint = Checkpoint.load(path)
            if checkpoint.done:
                print(f"backfill {resume} part {k}/{n} already finished", file=sys.stderr)
        else:
            p = config.pipeline(pipeline_name) if pipeline_name else config.pipelines[0]
            run_id = run_id or f"{p.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
            partitions = {t: await partitions_of(conn, t) for t in p.input_topics}
            plan = await plan_replay(consumer, partitions, from_timestamp_ms=parse_timestamp(from_timestamp))
            mine = sorted(plan.end)[k - 1 :: n]  # several processes split one run's partitions
            plan = type(plan)({tp: plan.start[tp] for tp in mine}, {tp: plan.end[tp] for tp in mine})
            run = {
                "id": run_id,
                "pipeline": p.name,
                "model": model,
                "sink": sink_spec or f"kafka:{p.backfill_topic}",
                "part": [k, n],
            }
            checkpoint = Checkpoint(state_dir / f"{run_id}.part{k}of{n}.json", run, plan)
            checkpoint.save()
        run = checkpoint.run
        p = config.pipeline(str(run["pipeline"]))
        sink_spec = str(run["sink"])
        # On stderr whatever the log level: the run id is what --resume needs after a crash.
        print(
            f"backfill {run['id']} (part {k}/{n}): {checkpoint.plan.remaining(checkpoint.position)} events in "
            f"{len(checkpoint.plan.end)} partitions of {', '.join(p.input_topics)} -> {sink_spec}; "
            f"resume with --resume {run['id']}",
            file=sys.stderr,
            flush=True,
        )
        model_ref = run.get("model")
        loaded = await asyncio.to_thread(load_model, model_spec(model_ref if isinstance(model_ref, str) else None, p))
        runner, cost = await asyncio.to_thread(build_runner, config, p, loaded)
        settle_garbage_collector()  # as the worker does: full collections over torch's heap cost more than decoding
        producer: AIOKafkaProducer | None = None
        file_sink: FileSink | None = None
        kind, _, target = sink_spec.partition(":")
        sink: Sink
        if kind == "kafka":
            await ensure_topics(
                conn,
                [target, p.dead_letter_topic],
                create=config.app.create_topics,
                partitions=config.app.topic_partitions,
            )
            producer = make_producer(conn, linger_ms=5, max_batch_size=512 * 1024)
            await producer.start()
            sink = KafkaSink(producer)
        elif kind == "file":
            file_sink = FileSink(Path(target), output_topic=target)
            sink = file_sink
        else:
            raise BackfillError(f"--sink {sink_spec!r}: expected kafka:TOPIC or file:PATH.jsonl|.parquet")
        pipeline = Pipeline(
            name=p.name,
            schema=p.schema,
            runner=runner,
            sink=sink,
            topics=PipelineTopics(output=target, dead_letter=p.dead_letter_topic),
            key_by_position=True,
        )
        batcher = Batcher(BatchPolicy(max_batch_size=p.max_batch_size, latency_budget_ms=None), cost)
        progress = Progress(checkpoint.plan.total, f"backfill {run['id']}")
        progress.update(checkpoint.plan.total - checkpoint.plan.remaining(checkpoint.position))
        try:
            summary = await run_backfill(
                consumer, pipeline, batcher, checkpoint, progress=lambda done, _total: progress.update(done)
            )
            progress.finish(checkpoint.plan.total - checkpoint.plan.remaining(checkpoint.position))
            return summary
        finally:
            if producer is not None:
                await producer.stop()
            if file_sink is not None:
                file_sink.close()
            await runner.aclose()
    finally:
        await consumer.stop()


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
    option("--from-timestamp", default=None, help="Start at this time (ISO 8601 or epoch ms), not offset 0."),
    option("--resume", default=None, help="Continue the run with this id where it stopped."),
    option("--run-id", default=None, help="Name the run (default: pipeline, time and a random suffix)."),
    option("--part", default="1/1", help="K/N: this process takes every Nth partition, starting at the Kth."),
    option("--state-dir", type=Path, default=DEFAULT_STATE, help="Where run checkpoints are kept."),
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
) -> None:
    """Replay a pipeline's input topics from the beginning through the same pipeline, then exit."""
    try:
        with exit_on_operator_error("backfill", BackfillError, TopicNotFoundError):
            summary = await backfill_run(pipeline, model, sink, from_timestamp, resume, run_id, part, state_dir)
    except ModelUnavailableError as exc:
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
