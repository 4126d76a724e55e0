"""Labels on the real broker: `sluice produce --labels-topic` writes the demo's labels beside its
events, and the ``kafka:TOPIC`` label source reads every one of them back by event id, the
latest record per id winning and records that are not labels skipped and counted."""

from __future__ import annotations

import logging

import orjson
import pytest

from app.demo_events import demo_events
from app.labels import TopicLabels, parse_labels
from streams.errors import TopicMissingError
from tests.integration.kafka_helpers import produce_raw, read_topic, run_sluice, topics_for, unique, write_config


async def test_produced_labels_are_read_back_by_event_id_and_bad_records_are_skipped_and_counted(
    kafka, tmp_path, caplog
):
    topics = topics_for(unique("labels"))
    events_topic, labels_topic = unique("labels-events"), unique("labels")
    config = write_config(tmp_path, bootstrap=kafka, pipeline="lb", partitions=3, **topics)
    count, seed = 600, 11
    result = run_sluice(
        "--config", str(config), "produce", "-n", str(count), "--seed", str(seed), "-t", events_topic,
        "--labels-topic", labels_topic,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"produced to {events_topic} (labels to {labels_topic}): {count}/{count}" in result.stderr
    expected = {e.id: e.label for e in demo_events(count, seed=seed)}
    assert 0 < sum(expected.values()) < count, "the demo's events hold both classes"

    source = parse_labels(f"kafka:{labels_topic}")
    assert isinstance(source, TopicLabels)
    table = await source.read(kafka)
    assert dict(table.labels) == expected
    assert (table.records, table.skipped) == (count, 0)
    # The label records are keyed by event id, beside events keyed by account.
    records = await read_topic(kafka, labels_topic, expected=count)
    assert all(orjson.loads(r.value)["id"] == r.key.decode() for r in records)
    assert len(await read_topic(kafka, events_topic, expected=count)) == count

    # Later: a chargeback turns one event's label to fraud, and records that are not labels arrive.
    legit = next(i for i, label in expected.items() if label == 0)
    await produce_raw(
        kafka,
        labels_topic,
        [
            (legit.encode(), orjson.dumps({"id": legit, "label": 1})),
            (b"x", b"not json"),
            (b"x", b'{"id": "tx-0", "label": "yes"}'),
            (b"x", b'{"label": 1}'),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="app.labels"):
        table = await source.read(kafka)
    assert dict(table.labels) == {**expected, legit: 1.0}
    assert (table.records, table.skipped) == (count + 4, 3)
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.labels"]
    assert len(warnings) == 1, "logged once, with the count, not per record"
    assert f"skipped 3 of {count + 4} records" in warnings[0] and "not JSON" in warnings[0]


async def test_a_labels_topic_that_does_not_exist_says_how_to_make_one(kafka):
    missing = unique("labels-missing")
    with pytest.raises(TopicMissingError, match=f"labels topic {missing} does not exist .*--labels-topic {missing}"):
        await TopicLabels(missing).read(kafka)


def test_produce_refuses_a_labels_topic_that_is_the_events_topic_or_no_topic_name(kafka, tmp_path):
    topics = topics_for(unique("labels-flags"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="lf", partitions=1, **topics)
    same = run_sluice("--config", str(config), "produce", "-n", "1", "-t", "t1", "--labels-topic", "t1")
    assert same.returncode == 2
    assert same.stderr.strip().splitlines()[-1] == (
        "sluice produce: --labels-topic t1: the events go there; give the labels their own topic"
    )
    bad = run_sluice("--config", str(config), "produce", "-n", "1", "--labels-topic", "a/b")
    assert bad.returncode == 2 and "--labels-topic 'a/b': not a Kafka topic name" in bad.stderr
