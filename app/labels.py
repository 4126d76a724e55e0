"""Where an evaluation's labels come from (``--labels``): a field of each event, or a topic of
``{"id": ..., "label": 0 or 1}`` records joined to the events by id.

Labels often arrive long after the event (a chargeback comes weeks later), so they usually live
apart from the events: in a topic keyed by event id, where a later record for an id replaces an
earlier one (a label corrected, or withdrawn by a record with no value, as compaction does).
Keyed by id, an id's records share a partition, so "later" is the partition's order.

Labels are 0 or 1; JSON ``true`` and ``false`` count as 1 and 0. Ids are compared as text, so an
event id 42 meets the label of ``"42"``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import orjson

from app.addresses import is_topic
from app.kafka_clients import Connection, describe, make_consumer
from app.topics import as_connection, partitions_of
from streams.errors import CommandLineError, TopicMissingError
from streams.kafka.replay import ReplaySource, plan_replay, start_consumer, stop_consumer
from streams.records import SourceRecord, UndecodableRecord

log = logging.getLogger(__name__)

LABEL_RECORD = '{"id": ..., "label": 0 or 1}'
READ_BATCH = 10_000
_SOURCE_KIND = re.compile(r"[a-z]+:")  # "kafka:", and what a mistyped or future kind looks like


def label_value(value: object) -> float | None:
    """``value`` as a label (0.0 or 1.0) if it is one: 0, 1, 0.0, 1.0, true or false."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    return None


def field_label(event: bytes | None, field: str) -> float | None:
    """The label in the top-level ``field`` of an event's JSON; None when the event has none there
    (no such field, null, or not a JSON object: a pipeline dead-letters those anyway). A value
    that is not a label means the field is not a label field: ``CommandLineError``."""
    try:
        doc = orjson.loads(event) if event is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get(field) is None:
        return None
    label = label_value(doc[field])
    if label is None:
        which = f"event {doc['id']!r}" if isinstance(doc.get("id"), str | int) else "an event"
        raise CommandLineError(
            f"--labels {field}: {which} holds {_shown(doc[field])} there, not a label (0, 1, true or false); "
            f"name the field that holds the events' labels, or give kafka:TOPIC of {LABEL_RECORD} records"
        )
    return label


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class FieldLabels:
    """``--labels FIELD``: each event's label is in its own field ``field``. An event holding
    something else there is unlabelled, counted in ``not_labels`` and said once in the log: one
    odd event must not stop a run (a resume would meet it again and never finish)."""

    field: str
    not_labels: int = 0

    def label_of(self, event: bytes | None) -> float | None:
        try:
            return field_label(event, self.field)
        except CommandLineError as exc:
            self.not_labels += 1
            if self.not_labels == 1:
                log.warning("%s; such events count as unlabelled (the count is in the report)", exc)
            return None


@dataclass(frozen=True)
class LabelTable:
    """What a labels topic holds: each id's latest label (``labels``), how many ``records`` were
    read, how many were ``skipped`` as not label records, and why the first of them was."""

    labels: Mapping[str, float]
    records: int
    skipped: int
    first_skipped: str | None = None


@dataclass(frozen=True)
class TopicLabels:
    """``--labels kafka:TOPIC``: labels in a topic of ``{"id": ..., "label": 0 or 1}`` records."""

    topic: str

    async def read(self, conn: Connection | str) -> LabelTable:
        """Every partition of the topic from its beginning to the end it had when the read began
        (labels that arrive meanwhile wait for the next evaluation), the last record per id
        winning. Raises ``TopicMissingError`` if the topic does not exist."""
        conn = as_connection(conn)
        partitions = await partitions_of(conn, self.topic)
        if not partitions:
            raise TopicMissingError(
                f"labels topic {self.topic} does not exist on {describe(conn)}: write {LABEL_RECORD} records "
                f"keyed by event id to it (the demo's: sluice produce --labels-topic {self.topic})"
            )
        # No group, committed records only: reading labels moves no one's offsets.
        consumer = make_consumer(conn, group_id=None, isolation_level="read_committed")
        await start_consumer(consumer)
        try:
            plan = await plan_replay(consumer, {self.topic: partitions})
            source = ReplaySource(consumer, plan, plan.start)
            reading = _Reading()
            while not source.exhausted:
                for record in await source.next_batch(READ_BATCH):
                    reading.add(record)
        finally:
            await stop_consumer(consumer)
        table = reading.table()
        if table.skipped:
            log.warning(
                "labels topic %s: skipped %d of %d records that are not %s (the first: %s)",
                self.topic,
                table.skipped,
                table.records,
                LABEL_RECORD,
                table.first_skipped,
            )
        return table


class _Reading:
    """Label records folded into each id's latest label, counting those that are not one."""

    def __init__(self) -> None:
        self.labels: dict[str, float] = {}
        self.records = self.skipped = 0
        self.first_skipped: str | None = None

    def add(self, record: SourceRecord | UndecodableRecord) -> None:
        self.records += 1
        where = f"{record.topic}[{record.partition}] offset {record.offset}"
        if isinstance(record, UndecodableRecord):
            return self._skip(f"{where}: {record.reason}")
        if record.value is None:  # a tombstone withdraws its key's label
            if record.key is not None:
                self.labels.pop(record.key.decode(errors="replace"), None)
            return None
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return self._skip(f"{where}: not JSON")
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str | int) or isinstance(doc["id"], bool):
            return self._skip(f"{where}: no string or integer 'id'")
        label = label_value(doc.get("label"))
        if label is None:
            return self._skip(f"{where}: 'label' is {_shown(doc.get('label'))}, not 0, 1, true or false")
        self.labels[str(doc["id"])] = label
        return None

    def _skip(self, why: str) -> None:
        self.skipped += 1
        self.first_skipped = self.first_skipped or why

    def table(self) -> LabelTable:
        return LabelTable(self.labels, self.records, self.skipped, self.first_skipped)


LabelSource = FieldLabels | TopicLabels


def parse_labels(text: str, where: str = "--labels") -> LabelSource:
    """``FIELD`` or ``kafka:TOPIC``, checked before anything is read."""
    if _SOURCE_KIND.match(text):
        kind, _, topic = text.partition(":")
        if kind != "kafka":
            raise CommandLineError(f"{where} {text!r}: labels come from kafka:TOPIC or an event FIELD, not {kind}:")
        if not is_topic(topic):
            raise CommandLineError(
                f"{where} {text!r}: {topic!r} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            )
        return TopicLabels(topic)
    if not text or text != text.strip() or not text.isprintable():
        raise CommandLineError(
            f"{where} {text!r}: give the event field that holds each event's label (e.g. {where} label), "
            f"or kafka:TOPIC of {LABEL_RECORD} records"
        )
    return FieldLabels(text)


def labels_for(ids: Iterable[str | int], labels: Mapping[str, float]) -> np.ndarray:
    """The labels of ``ids`` in order, NaN for an id with none (``models.evaluation`` leaves it out)."""
    return np.array([labels.get(str(i), np.nan) for i in ids], dtype=np.float64)
