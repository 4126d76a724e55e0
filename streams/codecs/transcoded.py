"""The records a schema transcoder gives the pipeline (``streams.codecs.schema_transcode``): an
event whose fields were taken as read (``ReadRecord``), one as the JSON object it encodes
(``TranscodedRecord``), or a dead letter saying why it is neither (``UndecodableRecord``)."""

from __future__ import annotations

from typing import Protocol, cast

from streams.codecs.wire_format import Unreadable
from streams.records import ReadRecord, SourceRecord, TranscodedRecord, UndecodableRecord


class JsonReader(Protocol):
    def read(self, value: bytes) -> bytes: ...


def picked(record: SourceRecord, event: tuple[object, ...], reader: JsonReader) -> ReadRecord:
    """``record`` with its fields taken as read; its JSON is written only if the decoder asks."""
    fields = (record.topic, record.partition, record.offset, record.timestamp, record.key, record.value)
    return tuple.__new__(ReadRecord, (*fields, tuple(record.headers), event, reader))  # as fast as a tuple


def json_value(record: SourceRecord) -> bytes | None:
    """The JSON object a pipeline's record holds: for a ``ReadRecord``, written now (reading any field
    but the pipeline's, such as a label, needs it)."""
    return unpicked(record).value


def unpicked(record: SourceRecord) -> SourceRecord:
    """``record`` as the JSON path has it (a ``ReadRecord`` handed back by the decoder)."""
    if type(record) is ReadRecord:
        return as_json(record, cast(JsonReader, record.reader))
    return record


def as_json(record: SourceRecord, reader: JsonReader) -> SourceRecord:
    """``record`` as the JSON object its value encodes, or a dead letter saying why it cannot be."""
    value = record.value
    assert value is not None
    try:
        decoded = reader.read(value)
    except Unreadable as exc:
        return dead(record, exc.error, exc.reason)
    return TranscodedRecord(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        decoded,
        tuple(record.headers),
        wire_value=value,
    )


def dead(record: SourceRecord, error: str, reason: str) -> UndecodableRecord:
    return UndecodableRecord(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        reason,
        record.key,
        record.value,
        tuple(record.headers),
        error=error,
    )
