"""The two ceilings every sluice figure is a ratio to, measured in the same run:

- the model alone: in-memory tensors, no Kafka, at its best batch size;
- the transport alone, live: aiokafka ``getmany`` + decode + encode + batched produce
  through the same pipeline code, with a runner that returns zeros instead of a model;
- the transport alone, for a backfill: aiokafka ``getmany`` + decode of a topic from its
  first offset, nothing produced (``fetch_and_decode``).

Those that read a topic can be timed, as bench.latency times them, over passes of it until
they last at least as long as each of its drains (``min_seconds``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.build import FETCH_BYTES_PER_PARTITION, PRODUCER_SETTINGS, build_stateful_inputs
from app.config import PipelineConfig, load_config
from app.config.pipeline_toml import write_pipeline_config
from app.demo_events import demo_events
from app.topics import partitions_of
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from models.synthetic import generate
from models.train import model_inputs
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.kafka.sink import KafkaSink
from streams.records import OutputRecord

SIZES = (1, 8, 32, 64, 128, 256, 512)


@functools.cache
def demo_pipeline(model: str) -> PipelineConfig:
    """The demo model's pipeline as a worker runs it (the transformer's with per-key state: its
    history is kept per account, not carried by the events)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.toml"
        write_pipeline_config(
            path,
            bootstrap="localhost:9092",
            pipeline="bench",
            input_topic="in",
            output_topic="out",
            dead_letter_topic="dlq",
            demo=model,
        )
        return load_config(path, environ={}).pipeline("bench")


def demo_parts(model: str) -> dict[str, Any]:
    """What a ceiling's Pipeline takes from the demo pipeline: its decoder's schema and, for a
    stateful one, its per-key features (computed as a backfill does: no changelog)."""
    config = demo_pipeline(model)
    return {"schema": config.schema, "stateful": build_stateful_inputs(config, "backfill")}


def model_alone(model: str, *, threads: int, min_seconds: float = 0.5) -> dict[str, object]:
    """Events/s of the bare model per batch size, on in-memory tensors."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = load_model(ModelSpec(demo=model)).module.eval()
        data = generate(max(SIZES), seed=5)
        per_size: dict[int, float] = {}
        for size in SIZES:
            inputs = [x[:size] for x in model_inputs(DEMO_MODELS[model], data)]
            with torch.inference_mode():
                module(*inputs)
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < min_seconds:
                    module(*inputs)
                    calls += 1
                per_size[size] = calls * size / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    best = max(per_size, key=lambda s: per_size[s])
    return {"per_batch_size_per_s": per_size, "best_batch": best, "best_per_s": per_size[best], "threads": threads}


class ZeroRunner:
    """Stands in for the model so only the transport is measured."""

    name = "none"
    version = "0"

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.zeros(inputs[0].shape[0], dtype=np.float32)

    async def aclose(self) -> None:
        return None


async def drop_topics(bootstrap: str, tag: str) -> list[str]:
    """Delete the topics whose names contain ``tag`` (a benchmark run's scratch topics, and the
    ones its workers derived from them: Quix names its changelogs ``changelog__<app id>--...``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if tag in t)
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def transport_alone(
    bootstrap: str, model: str, count: int, *, min_seconds: float = 0.0, prefix: str = "bench"
) -> float:
    """Events/s through fetch + decode + encode + produce (acknowledged), no model, over passes
    of ``count`` events read from the beginning until they add up to ``min_seconds``. Its
    topics are deleted afterwards."""
    tag = f"{prefix}-transport-{model}-{int(time.time())}"
    topic_in, topic_out = f"{tag}-in", f"{tag}-out"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_in, 2, 1), NewTopic(topic_out, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **PRODUCER_SETTINGS["live"]
    )
    await producer.start()
    sink = KafkaSink(
        lambda: AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **PRODUCER_SETTINGS["live"]
        )
    )
    try:
        pending = [await producer.send(topic_in, e.value, key=e.key) for e in demo_events(count, seed=3)]
        await asyncio.gather(*pending)
        await sink.start()
        pipeline = Pipeline(
            name="transport",
            **demo_parts(model),
            runner=ZeroRunner(),
            sink=sink,
            topics=PipelineTopics(topic_out, f"{topic_out}-dlq"),
        )

        async def one_pass(consumer: AIOKafkaConsumer) -> int:
            done, acks = 0, []
            while done < count:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=512)
                records = [r for part in fetched.values() for r in part]
                if not records:
                    continue
                scored = await pipeline.score(records)
                acks.append(await pipeline.delivery.send(scored.outputs))
                done += len(records)
                if len(acks) > 4:
                    await pipeline.delivery.settle(acks.pop(0))
            for ack in acks:
                await pipeline.delivery.settle(ack)
            return done

        return await timed_passes(bootstrap, topic_in, one_pass, min_seconds)
    finally:
        await sink.stop()
        await producer.stop()
        await drop_topics(bootstrap, f"{tag}-")


async def timed_passes(
    bootstrap: str, topic: str, one_pass: Callable[[AIOKafkaConsumer], Awaitable[int]], min_seconds: float
) -> float:
    """Events/s of ``one_pass`` (it reads ``topic`` from its first offset, returns how many
    events it handled), repeated until the passes add up to ``min_seconds``: at least one.
    Each pass has a consumer of its own, whose start-up is not timed (a consumer that seeks
    back at the end of a topic first waits out its fetch parked at the broker)."""
    events, seconds = 0, 0.0
    while not events or seconds < min_seconds:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            started = time.perf_counter()
            events += await one_pass(consumer)
            seconds += time.perf_counter() - started
        finally:
            await consumer.stop()
    return events / seconds


async def _read_from_beginning(
    bootstrap: str,
    topic: str,
    count: int,
    handle: Callable[[list[ConsumerRecord]], object],
    *,
    min_seconds: float = 0.0,
) -> float:
    """Events/s reading ``count`` events of ``topic`` from its first offset with ``getmany``,
    each fetch handed to ``handle``, again until the reads add up to ``min_seconds``."""

    async def one_pass(consumer: AIOKafkaConsumer) -> int:
        done = 0
        while done < count:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=2048)
            records = [r for part in fetched.values() for r in part]
            if records:
                handle(records)
                done += len(records)
        return done

    return await timed_passes(bootstrap, topic, one_pass, min_seconds)


async def fetch_and_decode(bootstrap: str, model: str, topic: str, count: int) -> float:
    """Events/s reading ``count`` events of ``topic`` from the beginning with ``getmany`` and
    decoding them with the pipeline's own decoder: no model, nothing produced."""
    pipeline = Pipeline(
        name="fetch-decode",
        **demo_parts(model),
        runner=ZeroRunner(),
        sink=_Unused(),
        topics=PipelineTopics(f"{topic}-unused", f"{topic}-unused-dlq"),
    )
    return await _read_from_beginning(bootstrap, topic, count, pipeline.decode)


async def read_ceilings(
    bootstrap: str, model: str, topic: str, count: int, *, min_seconds: float = 0.0
) -> dict[str, float]:
    """Two ceilings that owe nothing to sluice's code, on ``count`` events of ``topic`` read from
    the beginning (again until each read lasts ``min_seconds``): aiokafka ``getmany`` alone
    (records fetched, nothing decoded), and ``getmany`` + ``orjson.loads`` of every value + one
    ``np.array`` per model input over the batch (what a careful hand-written consumer does).
    Each the best of two reads: these machines are noisy."""
    fields = [f.field for f in demo_pipeline(model).schema.inputs]  # the event's fields the pipeline reads

    def parse(records: list[ConsumerRecord]) -> None:
        events = [orjson.loads(r.value) for r in records]
        for name in fields:
            np.array([e[name] for e in events], dtype=np.float32)

    async def read(handle: Callable[[list[ConsumerRecord]], object]) -> float:
        # An upper bound: no cyclic GC passes over this process's heap (torch, the benchmark's
        # own event lists) while it reads; what it parses is freed by reference counting.
        gc.collect()
        gc.disable()
        try:
            return await _read_from_beginning(bootstrap, topic, count, handle, min_seconds=min_seconds)
        finally:
            gc.enable()

    return {
        "getmany": max([await read(lambda records: None) for _ in range(2)]),
        "getmany_orjson": max([await read(parse) for _ in range(2)]),
    }


class _Unused:
    """The fetch-and-decode ceiling never emits."""

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        raise AssertionError("the fetch-and-decode ceiling produces nothing")
