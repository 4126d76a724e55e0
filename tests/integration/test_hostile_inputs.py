"""Inputs built to break the pipeline, against the real broker: each costs one dead letter, never the stream.

Every test accounts for each produced event by id or source position: a prediction for
every valid one, a readable dead letter for every bad one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    read_topic,
    running_worker,
    stop_gracefully,
    tally,
    topics_for,
    unique,
    write_config,
)

# Each is a legal Kafka record (under the broker's 1 MiB limit) and over max_payload_bytes,
# and each grows past that limit when a dead letter copies it as JSON text or base64.
HOSTILE_VALUES = {
    "quotes": b'"' * 700_000,
    "control bytes": b"\x01" * 200_000,
    "not UTF-8": b"\xff" + os.urandom(999_999),
}
BROKER_LIMIT = 1_048_588  # the default max.message.bytes of the dead-letter topic


async def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key, headers=headers) for key, value, headers in items]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_values_that_grow_when_escaped_are_dead_lettered_within_the_broker_limit_and_the_stream_goes_on(
    kafka, tmp_path
):
    name = unique("hostile")
    topics = topics_for(name)
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="hostile", extra="max_payload_bytes = 65536", partitions=2, **topics
    )
    events = list(demo_events(600, seed=41))
    trace = [("trace-id", b"abc-123")]
    items: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [(e.key, e.value, trace) for e in events[:300]]
    items += [(b"acct-hostile", value, trace) for value in HOSTILE_VALUES.values()]
    huge_key = b"\x02" * 300_000
    items.append((huge_key, b"not json", trace))
    items += [(e.key, e.value, trace) for e in events[300:]]

    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline hostile: scoring") as worker:
        await produce(kafka, topics["input_topic"], items)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=4, within_s=30)
        assert worker.poll() is None, "the worker keeps running"
        assert stop_gracefully(worker) == 0, "and stops cleanly: nothing is left re-sending forever"

    missing, duplicates = tally(outputs, {e.id for e in events})
    assert not missing, f"{len(missing)} valid events got no prediction, e.g. {missing[:10]}"
    assert not duplicates
    assert all(dict(r.headers) == {"trace-id": b"abc-123"} for r in outputs), "input headers reach the predictions"

    assert len(dead) == 4
    letters = [orjson.loads(r.value) for r in dead]
    for record in dead:
        assert len(record.value) + len(record.key or b"") < BROKER_LIMIT // 4
        assert dict(record.headers) == {"trace-id": b"abc-123"}
    by_size = {letter.get("value_bytes"): letter for letter in letters if letter["error"] == "PayloadTooLarge"}
    for value in HOSTILE_VALUES.values():
        letter = by_size[len(value)]
        assert letter["value_truncated"] is True
        assert letter["value_sha256"] == hashlib.sha256(value).hexdigest()
    [bad_json] = [letter for letter in letters if letter["error"] == "InvalidJSON"]
    assert bad_json["value"] == "not json"
    assert bad_json["key_truncated"] is True and bad_json["key_bytes"] == len(huge_key)
    [hashed] = [r.key for r, letter in zip(dead, letters, strict=True) if letter["error"] == "InvalidJSON"]
    assert hashed == b"sha256:" + hashlib.sha256(huge_key).hexdigest().encode()
    assert "again in" not in log.read_text(), "no output was re-sent"


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_an_output_the_broker_refuses_for_good_becomes_a_minimal_dead_letter_and_the_stream_goes_on(
    kafka, tmp_path, delivery
):
    # A compacted topic refuses records without a key (INVALID_RECORD): a refusal no retry
    # can cure, decided by the broker, not by sluice's own size check. Exactly-once does not
    # send them (the refusal would fail the transaction, and again after each restart).
    name = unique("refused")
    topics = topics_for(name)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics["input_topic"], 2, 1),
                NewTopic(topics["output_topic"], 2, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(topics["dead_letter_topic"], 2, 1),
            ]
        )
    finally:
        await admin.close()
    extra = 'delivery = "exactly_once"\ntransaction_interval_ms = 200' if delivery == "exactly_once" else ""
    config = write_config(tmp_path, bootstrap=kafka, pipeline="refused", partitions=2, extra=extra, **topics)
    events = list(demo_events(400, seed=42))
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    keyless = {e.id for e in events[100:400:50]}
    items = [(None if e.id in keyless else e.key, e.value, []) for e in events]

    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline refused: scoring") as worker:
        await produce(kafka, topics["input_topic"], items)
        outputs = await read_topic(
            kafka, topics["output_topic"], expected=len(events) - len(keyless), within_s=90, isolation_level=isolation
        )
        dead = await read_topic(
            kafka, topics["dead_letter_topic"], expected=len(keyless), within_s=60, isolation_level=isolation
        )
        assert worker.poll() is None
        assert stop_gracefully(worker) == 0

    missing, _ = tally(outputs, {e.id for e in events} - keyless)
    assert not missing, f"{len(missing)} keyed events got no prediction, e.g. {missing[:10]}"
    letters = [orjson.loads(r.value) for r in dead]
    assert {letter["error"] for letter in letters} == {"OutputRefused"}
    positions = {(letter["source"]["partition"], letter["source"]["offset"]) for letter in letters}
    assert len(positions) == len(keyless), "each refused prediction is named by its source position"
    assert "sending minimal dead letters instead" in log.read_text()


async def test_two_apps_with_a_pipeline_of_the_same_name_each_score_the_whole_topic(kafka, tmp_path):
    # Staging and production (or two teams) both call their pipeline "fraud": before the
    # group was named after the app too, the second app joined the first one's group,
    # started from its committed offsets and scored nothing.
    name = unique("twoapps")
    events = list(demo_events(200, seed=43))
    outputs = {}
    for app in ("staging", "production"):
        topics = {**topics_for(name), "output_topic": f"{name}-{app}-out"}
        directory = tmp_path / app
        directory.mkdir()
        config = write_config(directory, bootstrap=kafka, pipeline="fraud", app_id=f"{name}-{app}", **topics)
        with running_worker(config, directory / "worker.log", ready_text="pipeline fraud: scoring") as worker:
            if app == "staging":  # the first worker has created the topics
                await produce(kafka, topics["input_topic"], [(e.key, e.value, []) for e in events])
            outputs[app] = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
            assert stop_gracefully(worker) == 0
    for app, records in outputs.items():
        missing, _ = tally(records, {e.id for e in events})
        assert not missing, f"app {app}: {len(missing)} events not scored"
