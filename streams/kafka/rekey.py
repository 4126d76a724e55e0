"""Re-keying: the stage ahead of a pipeline whose per-key state is keyed by an event field.

Per-key state needs every event of a key in one partition, in one order. When the producers
key their records by something else (or not at all), a key's events are spread over the input
partitions, so this stage routes each event, unchanged (value, headers, timestamp), to a
repartition topic, keyed by its field, in the partition Kafka's default partitioner gives that
key (murmur2 of its bytes, as every Kafka client's). The pipeline then consumes the repartition
topic as it would an input keyed by the producers, and its backfill replays that topic: the
order in which a key's events were re-keyed is the order its state saw them, live and replayed.

Each routed event carries a ``sluice-source`` header naming its original position
(``topic:partition:offset``), which the pipeline's outputs carry on. An event without a usable
key (not a JSON object, no such field, a field that is not a string or an integer, a key over
``MAX_KEY_BYTES``) is dead-lettered here, with its original position. The stage runs in the
driver like a pipeline, so its offsets commit only after its records are acknowledged, or
with them in one transaction per input partition (exactly-once: no event is re-keyed twice).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from streams.codec import Decoded, Reject
from streams.dead_letters import encode_dead_letters
from streams.delivery import Delivery, Sink
from streams.features.inputs import MAX_KEY_BYTES
from streams.pipeline import BatchOutcome, Scored, wall_clock_ms
from streams.records import OutputRecord, SourceRecord, UndecodableRecord

SOURCE_HEADER = "sluice-source"
# Integer keys orjson reads as integers (beyond them, floats: not keys).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# What msgspec raises for a value it refuses (UnicodeDecodeError is a ValueError).
_REFUSED = (msgspec.DecodeError, ValueError, RecursionError)


@functools.lru_cache(maxsize=1 << 16)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner: the positive murmur2 of the key's bytes (cached: keys repeat)."""
    return murmur2(key) & 0x7FFFFFFF


def _all_headers(record: SourceRecord) -> tuple[tuple[str, bytes], ...]:
    return tuple(record.headers)


class Rekeying:
    """A ``streams.pipeline.Stage``: keys each event by ``field`` and routes it to ``topic``
    (``partitions`` partitions); dead letters go to ``dead_letter_topic``."""

    def __init__(
        self,
        *,
        name: str,
        field: str,
        topic: str,
        partitions: int,
        sink: Sink,
        dead_letter_topic: str,
        max_payload_bytes: int,
        dead_letter_copy_bytes: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.pipeline = name
        self.name = f"{name} (re-keying)"  # in the driver's log lines
        self.field = field
        self.topic = topic
        self.partitions = partitions
        self.dead_letter_topic = dead_letter_topic
        self.max_payload_bytes = max_payload_bytes
        self.dead_letter_copy_bytes = dead_letter_copy_bytes
        self.clock_ms = clock_ms
        # The fast path: msgspec reads the key field alone, skipping the rest of the event (a
        # third of orjson's time on a demo event). It vouches only for a string or an integer key
        # of at most MAX_KEY_BYTES; anything else is decided by ``key_of``, which says why.
        keyed = msgspec.defstruct("Keyed", [("key", str | int | None, msgspec.field(name=field, default=None))])
        self._fast_key = msgspec.json.Decoder(keyed).decode
        self.delivery = Delivery(
            sink,
            pipeline=name,
            dead_letter_topic=dead_letter_topic,
            max_copy_bytes=dead_letter_copy_bytes,
            clock_ms=clock_ms,
        )

    @property
    def lost_outputs(self) -> int:
        return self.delivery.lost_outputs

    def key_of(self, record: SourceRecord) -> bytes | Reject:
        """The event's key, or why it has none (a ``Reject`` whose index the caller sets)."""
        value = record.value
        if type(record) is UndecodableRecord:
            return Reject(-1, "Undecodable", f"the consumer could not decode the record's batch: {record.reason}")
        if value is None:
            return Reject(-1, "Tombstone", "the record has no value (a tombstone), so no key field")
        if len(value) > self.max_payload_bytes:
            return Reject(
                -1, "PayloadTooLarge", f"the value is {len(value)} bytes; the limit is {self.max_payload_bytes}"
            )
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Reject(-1, "InvalidJSON", f"the value is not valid JSON: {exc}")
        if not isinstance(doc, dict):
            return Reject(-1, "NotAnObject", f"the value is JSON {type(doc).__name__}, expected an object")
        key: Any = doc.get(self.field)
        if key is None:
            return Reject(
                -1, "MissingKey", f"field {self.field!r} (the key of the per-key features) is missing or null"
            )
        if isinstance(key, str):
            encoded = key.encode("utf-8", "surrogatepass")
        elif isinstance(key, int) and not isinstance(key, bool):
            encoded = str(key).encode()
        else:
            return Reject(-1, "WrongType", f"field {self.field!r} (the key) must be a string or an integer")
        if len(encoded) > MAX_KEY_BYTES:
            size = len(encoded)
            return Reject(-1, "KeyTooLong", f"field {self.field!r} (the key) is {size} bytes; at most {MAX_KEY_BYTES}")
        return encoded

    def decode(self, records: Sequence[SourceRecord], expired: Sequence[int] = ()) -> Decoded:
        """Each event's key (``ids``, row for row), and a reason for each event without one.
        ``expired`` is ignored: a late event is routed all the same (the pipeline may dead-letter it)."""
        rows: list[int] = []
        keys: list[bytes] = []
        rejects: list[Reject] = []
        fast_key, limit = self._fast_key, self.max_payload_bytes
        for index, record in enumerate(records):
            value = record.value
            if value and len(value) <= limit and type(record) is not UndecodableRecord:
                try:
                    found = getattr(fast_key(value), "key")  # noqa: B009 - a field msgspec made at run time
                except _REFUSED:
                    found = None
                encoded = None
                if type(found) is str:
                    encoded = found.encode("utf-8", "surrogatepass")
                elif type(found) is int and _INT_MIN <= found <= _INT_MAX:
                    encoded = str(found).encode()
                if encoded is not None and len(encoded) <= MAX_KEY_BYTES:
                    rows.append(index)
                    keys.append(encoded)
                    continue
            key = self.key_of(record)
            if type(key) is bytes:
                rows.append(index)
                keys.append(key)
            else:
                assert isinstance(key, Reject)
                rejects.append(Reject(index, key.error, key.message))
        return Decoded(rows=np.asarray(rows, dtype=np.int64), ids=list(keys), inputs=[], rejects=rejects)

    def featurize(self, records: Sequence[SourceRecord], decoded: Decoded, expired: Sequence[int] = ()) -> Decoded:
        return decoded

    async def finish(self, records: Sequence[SourceRecord], decoded: Decoded) -> Scored:
        """The routed records, in input order, and the dead letters."""
        started = time.perf_counter()
        topic, partitions = self.topic, self.partitions
        outputs = []
        for row, key in zip(decoded.rows.tolist(), decoded.ids, strict=True):
            record = records[row]
            assert record.value is not None
            position = f"{record.topic}:{record.partition}:{record.offset}".encode()
            outputs.append(
                OutputRecord(
                    topic,
                    key,
                    record.value,
                    record.partition,
                    (*record.headers, (SOURCE_HEADER, position)),
                    to_partition=key_hash(key) % partitions,
                    timestamp=record.timestamp,
                )
            )
        errors: dict[str, int] = {}
        if decoded.rejects:
            for reject in decoded.rejects:
                errors[reject.error] = errors.get(reject.error, 0) + 1
            outputs += encode_dead_letters(
                records,
                decoded.rejects,
                topic=self.dead_letter_topic,
                pipeline=self.pipeline,
                now_ms=self.clock_ms(),
                max_copy_bytes=self.dead_letter_copy_bytes,
                headers_of=_all_headers,
            )
        outcome = BatchOutcome(
            events=len(records),
            scored=len(decoded),
            dead_lettered=len(decoded.rejects),
            infer_seconds=time.perf_counter() - started,
            errors=errors,
        )
        return Scored(outputs, outcome)

    async def emit(self, scored: Scored) -> Awaitable[None]:
        return await self.delivery.deliver(scored.outputs)

    async def deliver(self, outputs: Sequence[OutputRecord]) -> Awaitable[None]:
        return await self.delivery.deliver(outputs)
