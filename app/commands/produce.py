"""``sluice produce``: write synthetic demo transactions to a topic, optionally at a fixed rate."""

from __future__ import annotations

import asyncio
import math
import time

import orjson
from click import Choice
from faust.cli import AppCommand, option

from app.addresses import is_topic
from app.demo_events import DemoEvent, demo_events
from app.demo_formats import FORMATS, demo_writer
from app.kafka_clients import connection, make_producer
from app.main import app, config
from app.progress_bar import ProgressBar
from app.schema_registry import refuse_in_memory
from app.topics import ensure_topics
from streams.errors import CommandLineError, exit_on_operator_error

FLUSH_EVERY = 2_000


@app.command(
    option("--count", "-n", type=int, default=1000, show_default=True, help="How many events to produce."),
    option("--topic", "-t", default=None, help="Topic to write to (default: the first pipeline's first input)."),
    option(
        "--rate",
        "-r",
        type=float,
        default=0.0,
        help="Events per second, open loop (0 = as fast as possible).",
    ),
    option("--seed", type=int, default=1, show_default=True, help="Seed: the same seed gives the same events."),
    option(
        "--format",
        "value_format",
        type=Choice(FORMATS),
        default="json",
        show_default=True,
        help="How to write the events: JSON, or Avro / Protobuf / JSON Schema in the schema registry's wire format, "
        "the schema registered under <topic>-value in [app.schema_registry].",
    ),
    option(
        "--labels-topic",
        default=None,
        help='Topic to also write the labels to: one {"id": ..., "label": 0 or 1} per event, keyed by its id '
        "(what an evaluation reads with --labels kafka:TOPIC).",
    ),
)
async def produce(
    self: AppCommand,
    count: int,
    topic: str | None,
    rate: float,
    seed: int,
    value_format: str,
    labels_topic: str | None,
) -> None:
    """Produce synthetic card transactions (the demo models' input) to Kafka."""
    topic = topic or config.pipelines[0].source_topics[0]
    with exit_on_operator_error("produce"):
        if count < 0:
            raise CommandLineError(f"--count {count}: expected a number of events >= 0")
        if not (math.isfinite(rate) and rate >= 0):
            raise CommandLineError(f"--rate {rate}: expected events per second >= 0 (0: as fast as possible)")
        if labels_topic is not None and not is_topic(labels_topic):
            raise CommandLineError(
                f"--labels-topic {labels_topic!r}: not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            )
        if labels_topic == topic:
            raise CommandLineError(
                f"--labels-topic {labels_topic}: the events go there; give the labels their own topic"
            )
        topics = [topic] if labels_topic is None else [topic, labels_topic]
        conn = connection(config)
        await ensure_topics(conn, topics, create=config.app.create_topics, partitions=config.app.topic_partitions)
        if value_format != "json":
            refuse_in_memory(config, "produce", value_format)
        write = await demo_writer(config, topic, value_format)
    producer = make_producer(conn, linger_ms=5)
    await producer.start()
    also = "" if labels_topic is None else f" (labels to {labels_topic})"
    progress = ProgressBar(count, f"produced to {topic}{also}", every_s=1.0)
    try:
        pending = []
        started = time.monotonic()
        for n, event in enumerate(demo_events(count, seed=seed), start=1):
            if rate > 0:
                # Open loop: event n is due at start + n/rate whatever the broker does.
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, await write(event.value), key=event.key))
            if labels_topic is not None:
                pending.append(await producer.send(labels_topic, label_record(event), key=event.id.encode()))
            if len(pending) >= FLUSH_EVERY:
                await asyncio.gather(*pending)
                pending.clear()
            progress.update(n)
        await asyncio.gather(*pending)
        progress.finish(count)
    finally:
        await producer.stop()


def label_record(event: DemoEvent) -> bytes:
    """The label an evaluation joins to ``event`` by its id (the demo knows it when it makes the
    event; real labels come later, from chargebacks or reviews)."""
    return orjson.dumps({"id": event.id, "label": int(event.label)})
