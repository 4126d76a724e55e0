"""Label sources without a broker: the ``--labels`` spec, labels from an event's field, and the
folding of label records (last per id wins, tombstones withdraw, bad records are counted)."""

from __future__ import annotations

import math

import orjson
import pytest

from app.labels import FieldLabels, TopicLabels, _Reading, field_label, label_value, labels_for, parse_labels
from streams.errors import CommandLineError
from streams.records import InputRecord, UndecodableRecord


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ("label", FieldLabels("label")),
        ("is_fraud", FieldLabels("is_fraud")),
        ("kafka:labels", TopicLabels("labels")),
        ("kafka:chargebacks.v1-x_y", TopicLabels("chargebacks.v1-x_y")),
    ],
)
def test_a_field_or_a_kafka_topic_is_a_label_source(text, source):
    assert parse_labels(text) == source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--labels '': give the event field that holds each event's label (e.g. --labels label), or kafka:TOPIC"),
        ("  ", "give the event field"),
        (" label", "give the event field"),
        ("la\nbel", "give the event field"),
        ("kafka:", "--labels 'kafka:': '' is not a Kafka topic name"),
        ("kafka:a/b", "'a/b' is not a Kafka topic name"),
        ("kafka:..", "'..' is not a Kafka topic name"),
        ("file:labels.csv", "--labels 'file:labels.csv': labels come from kafka:TOPIC or an event FIELD, not file:"),
    ],
)
def test_a_label_source_that_cannot_be_read_is_one_line_naming_what_to_fix(text, message):
    with pytest.raises(CommandLineError) as error:
        parse_labels(text)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "label"),
    [(0, 0.0), (1, 1.0), (0.0, 0.0), (1.0, 1.0), (True, 1.0), (False, 0.0), (2, None), (0.5, None), ("1", None)],
)
def test_labels_are_zero_one_true_or_false(value, label):
    assert label_value(value) == label


def test_a_field_label_comes_from_the_events_json_and_none_when_it_has_none():
    assert field_label(b'{"id": "a", "label": 1}', "label") == 1.0
    assert field_label(b'{"id": "a", "label": false}', "label") == 0.0
    assert FieldLabels("y").label_of(b'{"id": "a", "y": 0}') == 0.0
    for event in [b'{"id": "a"}', b'{"id": "a", "label": null}', b"not json", b"[1]", None]:
        assert field_label(event, "label") is None


def test_a_field_holding_something_else_than_labels_is_a_command_line_error():
    with pytest.raises(CommandLineError, match=r"--labels amount: event 'tx-1' holds 0\.87 there, not a label"):
        field_label(b'{"id": "tx-1", "amount": 0.87}', "amount")
    with pytest.raises(CommandLineError, match=r"an event holds \"xxxxxxxx.*\.\.\. there"):
        field_label(orjson.dumps({"label": "x" * 100}), "label")


def record(offset: int, value: bytes | None, key: bytes | None = None) -> InputRecord:
    return InputRecord("labels", 0, offset, 0, key, value)


def test_label_records_give_each_ids_last_label_and_count_what_is_not_one():
    reading = _Reading()
    for r in [
        record(0, b'{"id": "a", "label": 0}'),
        record(1, b'{"id": 7, "label": true}'),
        record(2, b'{"id": "b", "label": 1}'),
        record(3, b'{"id": "a", "label": 1}'),  # a chargeback: the later label wins
        record(4, b"not json"),
        record(5, b'{"label": 1}'),
        record(6, b'{"id": true, "label": 1}'),
        record(7, b'{"id": "c", "label": 2}'),
        record(8, b'{"id": "c"}'),
        record(9, b"[1, 2]"),
        record(10, None, key=b"b"),  # a tombstone withdraws b's label
        UndecodableRecord("labels", 0, 11, 0, "CorruptRecordError"),
    ]:
        reading.add(r)
    table = reading.table()
    assert dict(table.labels) == {"a": 1.0, "7": 1.0}
    assert (table.records, table.skipped) == (12, 7)
    assert table.first_skipped == "labels[0] offset 4: not JSON"


def test_labels_for_gives_nan_for_ids_without_a_label():
    got = labels_for(["a", 7, "missing"], {"a": 1.0, "7": 0.0})
    assert got[:2].tolist() == [1.0, 0.0] and math.isnan(got[2])


def test_an_event_with_something_else_in_the_label_field_is_unlabelled_and_counted():
    labels = FieldLabels("label")
    assert labels.label_of(b'{"id": "a", "label": "yes"}') is None
    assert labels.label_of(b'{"id": "b", "label": 1}') == 1.0
    assert labels.label_of(b'{"id": "c", "label": 7}') is None
    assert labels.not_labels == 2
