"""Avro outputs (``output_format = "avro"``) on the real broker, read back the way a downstream team
would read them: a plain confluent-kafka ``Consumer`` and confluent-kafka's own Avro deserializer,
by the schema sluice registered under ``<output topic>-value``. Live (exactly-once, so the
encoding is shown to go into the transactions) and by a backfill to its Kafka topic; dead letters
stay JSON.

The registry is confluent-kafka's in-memory one (``mock://``), which lives in one process: the
pipeline runs here (``PipelineService``, the worker's own service; the backfill's own run). Its
sync and async clients keep separate stores (each mock client has its own), so the consumer's
deserializer is the async one, ``AsyncAvroDeserializer``, over the client sluice registered with.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from confluent_kafka import Consumer
from confluent_kafka.serialization import MessageField, SerializationContext

from app.backfill_run import backfill_run
from app.commands.backfill import checked_run
from app.config import load_config
from app.demo_events import demo_events
from app.schema_registry import registry_client
from app.testing import score_async
from streams.codecs.avro_outputs import output_schema
from tests.integration.kafka_helpers import (
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    topics_for,
    unique,
    write_config,
)
from tests.integration.test_event_formats import create_topics, running
from tests.one_line import one_line_exit_2

OPTIONAL = ("role", "fallback", "fallback_reason")


def consume(bootstrap: str, topic: str, count: int, within_s: float = 30) -> list[bytes]:
    """``count`` committed values of ``topic`` from its beginning, read by confluent-kafka's Consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("avro-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + within_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
    finally:
        consumer.close()
    return values


async def read_back(config, topic: str, count: int, kafka: str) -> list[dict]:
    """The Avro values of ``topic`` as confluent-kafka's deserializer reads them, by the registry's schema."""
    values = await asyncio.to_thread(consume, kafka, topic, count)
    client = registry_client(config.app.schema_registry)  # first: it keeps the client's imports quiet
    from confluent_kafka.schema_registry.avro import AsyncAvroDeserializer

    deserializer = await AsyncAvroDeserializer(client)
    context = SerializationContext(topic, MessageField.VALUE)
    return [await deserializer(value, context) for value in values]


async def test_avro_outputs_are_read_back_by_the_ordinary_deserializer_as_the_json_outputs_would_be(kafka, tmp_path):
    name = "avro_out"
    topics = topics_for(unique("avro-out"))
    registry = f"mock://{unique('outputs-registry')}"
    config_path = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        extra='output_format = "avro"\ndelivery = "exactly_once"\n',
        app_extra=f'schema_registry = {{ url = "{registry}" }}\n',
        **topics,
    )
    config = load_config(config_path)
    events = list(demo_events(150, seed=25))
    # The test kit writes JSON whatever output_format says: what each prediction would have been.
    twins = {p["id"]: p for p in (await score_async(config_path, name, [e.value for e in events])).predictions}
    await create_topics(config_path, name)
    await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events] + [(b"k", b"not json")])

    async with running(config_path, name):
        await read_topic(kafka, topics["output_topic"], expected=len(events), isolation_level="read_committed")
        (dead,) = await read_topic(kafka, topics["dead_letter_topic"], expected=1, isolation_level="read_committed")
    assert orjson.loads(dead.value)["error"] == "InvalidJSON", "dead letters stay JSON"

    client = registry_client(config.app.schema_registry)
    registered = await client.get_latest_version(f"{topics['output_topic']}-value")
    assert orjson.loads(registered.schema.schema_str) == output_schema(name)
    inputs = {
        orjson.loads(r.value)["id"]: r
        for r in await read_topic(kafka, topics["input_topic"], expected=len(events) + 1)
        if r.value != b"not json"
    }
    read = await read_back(config, topics["output_topic"], len(events), kafka)
    assert sorted(doc["id"] for doc in read) == sorted(twins)
    served = {doc["id"]: doc["prediction"] for doc in read}
    for doc in read:
        source = inputs[doc["id"]]
        twin = twins[doc["id"]]
        assert all(doc.pop(field) is None for field in OPTIONAL), "the champion scored them"
        assert type(doc.pop("latency_ms")) is int
        assert abs(doc.pop("prediction") - twin["prediction"]) < 1e-6
        assert doc == {
            "id": twin["id"],
            "model": twin["model"],
            "model_version": twin["model_version"],
            "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
            "event_ts": source.timestamp,
        }

    # A backfill to its Kafka topic registers under that topic's subject and writes Avro too.
    run, specs = await checked_run(config, name, None, None, None, None, None, "1/1", tmp_path / "state")
    summary = await backfill_run(config, run, specs)
    assert (summary.scored, summary.dead_lettered) == (len(events), 1)
    backfill_topic = config.pipeline(name).backfill_topic
    replayed = await read_back(config, backfill_topic, len(events), kafka)
    history = {doc["id"]: doc["prediction"] for doc in replayed}
    assert history.keys() == served.keys()
    assert all(abs(history[i] - served[i]) < 1e-6 for i in served), "a backfill scores history as live did"
    assert await client.get_latest_version(f"{backfill_topic}-value")


def test_a_worker_and_a_backfill_whose_registry_cannot_be_reached_stop_with_one_line_naming_the_subject(
    kafka, tmp_path
):
    topics = topics_for(unique("avro-away"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="away",
        extra='output_format = "avro"\n',
        app_extra=f'schema_registry = {{ url = "{url}" }}\n',
        **topics,
    )
    line = one_line_exit_2(run_sluice("--config", str(config), "worker"))
    assert line.startswith(
        f"sluice worker: {config}: pipeline away: the schema registry {url} did not register the outputs' schema "
        f"under subject '{topics['output_topic']}-value' (output_format = \"avro\"): "
    ), line
    backfill = run_sluice("--config", str(config), "backfill", "--state-dir", str(tmp_path / "state"))
    assert f"under subject '{topics['output_topic']}-backfill-value'" in one_line_exit_2(backfill)
