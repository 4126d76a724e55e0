"""Dead-letter records: what could not be scored, why, and where it came from.

A dead letter keeps the original bytes so nothing is lost: as text when they are valid
UTF-8, else base64. Keyed like the input so a reprocessing job can restore order.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import orjson

from streams.codec import Reject
from streams.records import OutputRecord, SourceRecord


def _bytes_fields(name: str, data: bytes | None) -> dict[str, str | None]:
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def dead_letter(
    record: SourceRecord, *, error: str, message: str, topic: str, pipeline: str, now_ms: int
) -> OutputRecord:
    body = {
        "pipeline": pipeline,
        "error": error,
        "reason": message,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        },
        "dead_lettered_at": now_ms,
        **_bytes_fields("key", record.key),
        **_bytes_fields("value", record.value),
    }
    return OutputRecord(topic, record.key, orjson.dumps(body), record.partition)


def encode_dead_letters(
    records: Sequence[SourceRecord], rejects: Sequence[Reject], *, topic: str, pipeline: str, now_ms: int
) -> list[OutputRecord]:
    return [
        dead_letter(records[r.index], error=r.error, message=r.message, topic=topic, pipeline=pipeline, now_ms=now_ms)
        for r in rejects
    ]
