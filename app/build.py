"""One builder for the objects a pipeline runs with, in both modes: the worker (live), the
backfill, and the benchmarks all get the same model runner, pipeline, batcher, Kafka sink and
consumer settings from here, so the two modes differ only where a setting below says why.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

from app.config import Config, PipelineConfig
from app.kafka_clients import Connection, Consumer, make_consumer, make_producer
from app.topics import compacted_topics, max_message_bytes
from models.export_archive import reason
from models.fit import check_fits
from models.loading import LoadedModel, ModelSpec, load_model
from models.protocol import Runner
from models.runner import TorchRunner
from streams.codecs.avro_outputs import AvroOutputs
from streams.errors import ModelLoadError, ModelOutputError, StateError
from streams.features.folders import make_own_folder, remove_stale
from streams.features.rocks_store import RocksStore
from streams.features.spec import StateSpec
from streams.features.step import FeatureStep
from streams.features.store import KeyedStore
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.cost_model import CostModel, reference_sizes
from streams.flow.delivery import Delivery, Replacement
from streams.flow.pipeline import Pipeline, PipelineTopics, Sink
from streams.flow.roles import Roles
from streams.flow.shadow import Shadow
from streams.flow.stateful_inputs import StatefulInputs
from streams.kafka.fetch_pacing import FetchPacing
from streams.kafka.sink import KafkaSink
from streams.kafka.transactions import PartitionTransactions, StateInTransactions, TransactionalSink
from streams.records import OutputRecord

Mode = Literal["live", "backfill"]

# Bytes fetched per partition per request: a few thousand demo events, enough to fill the
# largest batch from one partition in one round trip (the broker's default, 1 MiB, needed several).
FETCH_BYTES_PER_PARTITION = 4 * 1024 * 1024
# What a live fetch waits for at the broker while records come, for at most the pipeline's
# max_fill_wait_ms: answered at each arrival, a worker under moderate load ran a fetch and a
# turn of its loop per few events, 80% of a core at 2,500 demo events/s (40% with this).
FETCH_MIN_BYTES = 64 * 1024
# Producer batching by mode. Live: outputs leave within a millisecond, since every one counts
# against the latency budget. Backfill: nobody waits on one output, so wait a little longer and
# send larger batches, fewer requests per event.
PRODUCER_SETTINGS: dict[Mode, dict[str, int]] = {
    "live": {"linger_ms": 1, "max_batch_size": 256 * 1024},
    "backfill": {"linger_ms": 5, "max_batch_size": 512 * 1024},
}
# Decoding, encoding and handing outputs to the producer, per event, on top of inference;
# only a starting point: the cost model replaces it with what it measures within seconds.
PIPELINE_SECONDS_PER_EVENT = 15e-6


def load_checked_model(pipeline: PipelineConfig, spec: ModelSpec) -> LoadedModel:
    """``spec`` loaded, and shown to score the pipeline's inputs with one prediction per row:
    every way a model enters a pipeline (the worker's config, ``backfill -m``, a swap) meets
    the same check before its first event, and a model that does not fit is one
    ``ModelLoadError`` line naming the model, never a traceback from the first batch."""
    loaded = load_model(spec)
    try:
        check_fits(loaded.module, loaded.name, pipeline.input_shapes)
    except ModelOutputError as exc:
        raise ModelLoadError(f"{spec.describe()} does not fit pipeline {pipeline.name}: {exc}") from None
    return loaded


def build_runner(
    config: Config, pipeline: PipelineConfig, loaded: LoadedModel, *, threads: int | None = None, nice: int = 0
) -> tuple[TorchRunner, CostModel]:
    """The model on its device, warmed up, and a cost model seeded from the warm-up; ``threads``
    and ``nice`` for a model that must not compete with the champion (a shadow)."""
    runner = TorchRunner(
        loaded.module,
        name=loaded.name,
        version=loaded.version,
        device=config.app.device,
        threads=config.app.torch_threads if threads is None else threads,
        nice=nice,
    )
    try:
        timings = runner.warm_up(pipeline.input_shapes, reference_sizes(pipeline.max_batch_size))
    except Exception as exc:  # Broad on purpose: on its device, at its batch sizes, a model can fail any way
        runner.close()
        raise ModelLoadError(
            f"model {loaded.name} v{loaded.version} failed its warm-up on {runner.device} "
            f"(batches of up to {pipeline.max_batch_size} rows): {reason(exc)}"
        ) from exc
    cost = CostModel()
    cost.seed({n: t + n * PIPELINE_SECONDS_PER_EVENT for n, t in timings.items()})
    return runner, cost


def build_pipeline(
    pipeline: PipelineConfig,
    runner: Runner | Roles,
    sink: Sink,
    mode: Mode,
    *,
    topics: PipelineTopics | None = None,
    emit_features: bool = False,
    state: StatefulInputs | None = None,
    shadows: Sequence[Shadow] = (),
    avro: AvroOutputs | None = None,
) -> Pipeline:
    """The pipeline of ``mode``: a backfill keys outputs by source position (a re-run overwrites on
    a compacted topic) and writes where ``topics`` say; the worker keys them like their input, to
    the output topic, as JSON or, with ``avro``, Avro (``app.avro_outputs``).
    A pipeline with per-key features gets its features step (``state``, or one built here), with
    an empty state: the worker restores it from the changelog as
    partitions are assigned, the backfill rebuilds it."""
    topics = topics or PipelineTopics(output=pipeline.output_topic, dead_letter=pipeline.dead_letter_topic, avro=avro)
    built = Pipeline(
        name=pipeline.name,
        schema=pipeline.schema,
        runner=runner,
        sink=sink,
        topics=topics,
        key_by_position=mode == "backfill",
        dead_letter_copy_bytes=pipeline.dead_letter_copy_bytes,
        headers=pipeline.headers,
        stateful=state if state is not None else build_stateful_inputs(pipeline, mode),
        emit_features=emit_features,
        shadows=shadows,
    )
    if topics.avro is not None:
        # An Avro output the broker refuses for good still names its source in its minimal dead letter.
        built.delivery.replacement = avro_replacement(built.delivery, topics.avro)
    return built


def avro_replacement(delivery: Delivery, avro: AvroOutputs) -> Replacement:
    """``delivery``'s minimal dead letter for a refused output, read as its JSON twin when it is Avro."""

    def replacement(refused: OutputRecord, reason: str, now_ms: int) -> OutputRecord:
        return delivery.minimal_dead_letter(refused._replace(value=avro.as_json(refused.value)), reason, now_ms)

    return replacement


def build_stateful_inputs(pipeline: PipelineConfig, mode: Mode) -> StatefulInputs | None:
    if pipeline.state is None:
        return None
    live = mode == "live"  # a backfill rebuilds its state from offset zero and writes no changelog
    return StatefulInputs(
        FeatureStep(pipeline.state, build_store(pipeline.state, live, pipeline.changelog_topic)),
        pipeline.inputs,
        pipeline.schema.inputs,
    )


def build_store(spec: StateSpec, live: bool, changelog_topic: str) -> KeyedStore:
    """The store the config names. A live worker's RocksDB databases are kept between runs, in a
    folder per changelog topic (one per partition); a backfill's are its own, removed at its end."""
    if spec.store == "memory":
        return KeyedStore(spec.capacity, len(spec.fields), track_changes=live)
    assert spec.directory is not None
    try:
        spec.directory.mkdir(parents=True, exist_ok=True)
        remove_stale(spec.directory)
        if live:
            directory = spec.directory / changelog_topic
            remove_stale(directory)
        else:
            directory = make_own_folder(spec.directory, f"backfill-{os.getpid()}-")
    except OSError as exc:
        raise StateError(f"cannot use the state directory {spec.directory}: {exc.strerror or exc}") from None
    return RocksStore(
        spec.capacity,
        len(spec.fields),
        layout_id=spec.layout_id,
        directory=directory,
        cache_keys=spec.cache_keys,
        track_changes=live,
        remove_on_close=not live,
    )


def live_fetch_pacing(pipeline: PipelineConfig) -> FetchPacing:
    """How long the broker may hold a live fetch (``streams.kafka.fetch_pacing``): while records
    come, for ``FETCH_MIN_BYTES``, up to ``max_fill_wait_ms`` and a tenth of the budget (whole
    milliseconds, at least one, never longer than an idle fetch); while none come, or with
    ``max_fill_wait_ms = 0``, an answer as soon as anything arrived."""
    idle_wait_ms = min(pipeline.poll_ms, 500)
    if pipeline.max_fill_wait_ms <= 0:
        return FetchPacing(busy_min_bytes=1, busy_wait_ms=idle_wait_ms, idle_wait_ms=idle_wait_ms)
    wait_ms = min(pipeline.max_fill_wait_ms, pipeline.latency_budget_ms / 10, idle_wait_ms)
    return FetchPacing(
        busy_min_bytes=FETCH_MIN_BYTES, busy_wait_ms=max(1, math.floor(wait_ms)), idle_wait_ms=idle_wait_ms
    )


def input_isolation(pipeline: PipelineConfig) -> str:
    """How inputs are read: a transactional producer's aborted records are not events for an
    exactly-once pipeline, nor for per-key state, which the live worker and a backfill must
    build from the same records."""
    return "read_committed" if pipeline.delivery == "exactly_once" or pipeline.state is not None else "read_uncommitted"


def build_live_consumer(
    conn: Connection, pipeline: PipelineConfig, *, group_id: str, client_id: str
) -> tuple[Consumer, FetchPacing]:
    """A live consumer-group member reading ``pipeline``'s inputs (or its re-keying stage's), not
    started, and the pacing of its fetches (``live_fetch_pacing``)."""
    pacing = live_fetch_pacing(pipeline)
    consumer = make_consumer(
        conn,
        group_id=group_id,
        client_id=client_id,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
        isolation_level=input_isolation(pipeline),
        **pacing.idle_settings(),
    )
    return consumer, pacing


def build_batcher(pipeline: PipelineConfig, cost: CostModel, mode: Mode) -> Batcher:
    """Live: batches sized to the latency budget. Backfill: no budget, the sizes with the most events per second."""
    if mode == "backfill":
        return Batcher(BatchPolicy(max_batch_size=pipeline.max_batch_size, latency_budget_ms=None), cost)
    policy = BatchPolicy(
        max_batch_size=pipeline.max_batch_size,
        latency_budget_ms=pipeline.latency_budget_ms,
        deadline_from=pipeline.deadline_from,
        max_fill_wait_ms=pipeline.max_fill_wait_ms,
    )
    return Batcher(policy, cost)


async def build_kafka_sink(conn: Connection, topics: Sequence[str], mode: Mode, **settings: Any) -> KafkaSink:
    """A Kafka sink for ``topics`` (the limits it checks records against are theirs), not started."""
    producer_settings = {**PRODUCER_SETTINGS[mode], **settings}
    return KafkaSink(
        lambda: make_producer(conn, **producer_settings),
        max_record_bytes=await max_message_bytes(conn, topics),
    )


async def build_transactional_sink(
    conn: Connection,
    *,
    group_id: str,
    input_topic: str,
    outputs: Sequence[str],
    state: StateInTransactions | None = None,
    **settings: Any,
) -> tuple[PartitionTransactions, TransactionalSink]:
    """Exactly-once: transactional producers (one per partition of ``input_topic``, made as partitions
    are assigned, their ids named after ``group_id``) and the sink that sends ``outputs`` with them,
    checked against those topics' limits; not started. The pipeline's, and its re-keying stage's."""
    transactions = build_partition_transactions(conn, group_id, state=state, **settings)
    sink = TransactionalSink(
        transactions,
        input_topic=input_topic,
        max_record_bytes=await max_message_bytes(conn, outputs),
        compacted=await compacted_topics(conn, outputs),
    )
    return transactions, sink


def build_partition_transactions(
    conn: Connection, group_id: str, *, state: StateInTransactions | None = None, **settings: Any
) -> PartitionTransactions:
    """One transactional producer per input partition, made as partitions are assigned: what
    commits a partition's offset (with its outputs, exactly-once; with its ``state``'s changelog)."""
    producer_settings = {**PRODUCER_SETTINGS["live"], **settings}
    return PartitionTransactions(
        lambda transactional_id: make_producer(conn, transactional_id=transactional_id, **producer_settings),
        group_id=group_id,
        state=state,
    )


def settle_garbage_collector() -> None:
    """Keep Python's cyclic GC off the latency tail.

    Everything alive after start-up (torch, Faust, the model) lives for the whole process;
    freezing it keeps full collections from walking those objects again and again, and a
    higher young-generation threshold makes collections rarer under a stream of short-lived
    records. Measured on the MLP (bench.latency, 2 cores): p99 at 40% of saturation 73 -> 50 ms,
    backlog drain rate 35k -> 41k events/s.
    """
    gc.collect()
    gc.freeze()
    # Frozen objects are never freed, not even at exit: native extensions torch loads with an
    # exported program (triton's nanobind) then print a page of "leaked" warnings as the process ends.
    atexit.register(gc.unfreeze)
    gc.set_threshold(50_000, 20, 100)
