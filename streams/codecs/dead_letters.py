"""Dead-letter records: what could not be scored, why, and where it came from.

A dead letter keeps the original bytes so nothing is lost: as text when they are valid
UTF-8, else base64. Keyed like the input so a reprocessing job can restore order.

A dead letter must itself fit the broker's record limit, or the pipeline would stall on
it. Escaping can multiply a value's size by six (``\\u0001`` per control byte), so each
copy (value and key) is bounded by ``max_copy_bytes`` of JSON: past it the dead letter keeps
a prefix and says so (``value_truncated``, the original length, the SHA-256 of the whole
value). A key longer than that is replaced, as the dead letter's record key, by its hash:
the same input key always maps to the same record key, so per-key order still holds. The
input's headers are carried only if they add up to at most that much too. So a dead letter
holds at most four such amounts (two copies, its record key, its headers) plus its reason.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from streams.codecs.codec import Reject
from streams.records import OutputRecord, SourceRecord

# Enough to read and replay almost any real event, and 16 of them fit a default 1 MiB record.
DEFAULT_MAX_COPY_BYTES = 64 * 1024
# Reasons come from our own messages, but also from a model's exception text.
MAX_REASON_CHARS = 2_000


def _copy_fields(name: str, data: bytes | None, limit: int) -> dict[str, Any]:
    """``name`` (text) or ``name_base64`` holding ``data``, or as much of it as fits ``limit``
    bytes of JSON, with what a reader needs to know it is incomplete."""
    if data is None:
        return {name: None}
    whole = _encoded(name, data)
    if len(orjson.dumps(whole)) <= limit:
        return whole
    # Shrink the prefix until its JSON fits; each step scales by how much too big it was,
    # so this converges in a few rounds even for values that grow six-fold when escaped.
    take = limit
    while True:
        prefix = _encoded(name, data[:take], partial=True)
        size = len(orjson.dumps(prefix))
        if size <= limit or take == 0:
            break
        take = min(take - 1, take * limit // size)
    return {
        **prefix,
        f"{name}_truncated": True,
        f"{name}_bytes": len(data),
        f"{name}_sha256": hashlib.sha256(data).hexdigest(),
    }


def _encoded(name: str, data: bytes, *, partial: bool = False) -> dict[str, str]:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            # The cut fell inside a character: keep the text before it.
            return {name: data[: exc.start].decode("utf-8")}
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def bounded_headers(headers: Sequence[tuple[str, bytes]], limit: int) -> tuple[tuple[str, bytes], ...] | None:
    """``headers`` if they add up to at most ``limit`` bytes, else None: a dead letter must fit the
    broker whatever the input carried, and carrying half of a trace context would mislead."""
    size = sum(len(name.encode()) + len(value or b"") for name, value in headers)
    return tuple(headers) if size <= limit else None


def record_key(key: bytes | None, limit: int) -> bytes | None:
    """The key a dead letter is produced with: the input's, or its SHA-256 when it is too long."""
    if key is None or len(key) <= limit:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def dead_letter(
    record: SourceRecord,
    *,
    error: str,
    message: str,
    topic: str,
    pipeline: str,
    now_ms: int,
    max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES,
    headers: Sequence[tuple[str, bytes]] = (),
) -> OutputRecord:
    body = {
        "pipeline": pipeline,
        "error": error,
        "reason": message[:MAX_REASON_CHARS],
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        },
        "dead_lettered_at": now_ms,
        **_copy_fields("key", record.key, max_copy_bytes),
        # An event decoded by its schema is copied as the topic held it (its wire format), not as decoded.
        **_copy_fields("value", getattr(record, "wire_value", None) or record.value, max_copy_bytes),
    }
    carried = bounded_headers(headers, max_copy_bytes)
    if carried is None:
        body["headers_dropped"] = True
    return OutputRecord(
        topic, record_key(record.key, max_copy_bytes), orjson.dumps(body), record.partition, carried or ()
    )


def encode_dead_letters(
    records: Sequence[SourceRecord],
    rejects: Sequence[Reject],
    *,
    topic: str,
    pipeline: str,
    now_ms: int,
    max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES,
    headers_of: Any = None,
) -> list[OutputRecord]:
    """A dead letter per reject; ``headers_of(record)`` gives the headers each carries on."""
    return [
        dead_letter(
            records[r.index],
            error=r.error,
            message=r.message,
            topic=topic,
            pipeline=pipeline,
            now_ms=now_ms,
            max_copy_bytes=max_copy_bytes,
            headers=headers_of(records[r.index]) if headers_of is not None else (),
        )
        for r in rejects
    ]


def replacement_for_refused(
    refused: OutputRecord, reason: str, *, topic: str, pipeline: str, now_ms: int, max_copy_bytes: int
) -> OutputRecord:
    """A minimal dead letter standing in for an output the broker refused for good: it names
    the source position (read from the refused output, which carries it) and why, and keeps
    no copy of the event, so it is small enough for any broker."""
    try:
        body = orjson.loads(refused.value)
        source = body.get("source") if isinstance(body, dict) else None
        error = body.get("error") if isinstance(body, dict) else None
    except orjson.JSONDecodeError:
        source, error = None, None
    what = "its dead letter" if error else "its prediction"
    letter = {
        "pipeline": pipeline,
        "error": error if isinstance(error, str) else "OutputRefused",
        "reason": f"the broker refused {what} ({reason[:MAX_REASON_CHARS]}); the event's bytes are not kept",
        "source": source,
        "dead_lettered_at": now_ms,
        "output_refused": True,
        "key_sha256": hashlib.sha256(refused.key).hexdigest() if refused.key is not None else None,
    }
    # No headers: they may be what made the output too large.
    return OutputRecord(topic, record_key(refused.key, max_copy_bytes), orjson.dumps(letter), refused.partition)
