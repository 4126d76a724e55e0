"""Re-keying: the stage ahead of a pipeline whose per-key state is keyed by an event field.

Per-key state needs every event of a key in one partition, in one order. When the producers
key their records by something else (or not at all), a key's events are spread over the input
partitions, so this stage routes each event, unchanged (value, headers, timestamp), to a
repartition topic, keyed by its field, in the partition Kafka's default partitioner gives that
key (murmur2 of its bytes, as every Kafka client's). The pipeline then consumes the repartition
topic as it would an input keyed by the producers, and its backfill replays that topic: the
order in which a key's events were re-keyed is the order its state saw them, live and replayed.

Each routed event carries a ``sluice-source`` header naming its original position
(``topic:partition:offset``; one the producer set is replaced), which the pipeline's outputs
carry on. An event the repartition topic would refuse (too large with its new key and header,
or a timestamp outside the topic's ``message.timestamp.before/after.max.ms``) is dead-lettered
at its original position: sent, it would fail the whole transaction, again at each restart. So
is an event without a usable key (``streams.codecs.key_field``). The stage runs in the driver like a
pipeline; its offsets commit with its records in one transaction per input partition (the
service sees to it), so no event is ever re-keyed twice.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import numpy as np
from aiokafka.partitioner import murmur2

from streams.codecs.codec import Decoded, Reject
from streams.codecs.dead_letters import dead_letter, encode_dead_letters
from streams.codecs.key_field import KeyField
from streams.flow.delivery import Delivery, Sink
from streams.flow.pipeline import BatchOutcome, Scored, wall_clock_ms
from streams.records import InputRecord, OutputRecord, SourceRecord, header_picker

SOURCE_HEADER = "sluice-source"
# Room left for the clocks of this worker and the broker to differ when checking a timestamp
# against the topic's window: an event that close to an edge is dead-lettered, not risked.
CLOCK_SKEW_MS = 60_000


@functools.lru_cache(maxsize=1 << 16)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner: the positive murmur2 of the key's bytes (cached: keys repeat)."""
    return murmur2(key) & 0x7FFFFFFF


class Rekeying:
    """A ``streams.flow.pipeline.Stage``: keys each event by ``field`` and routes it to ``topic``
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
        timestamp_window_ms: tuple[int | None, int | None] = (None, None),
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """``timestamp_window_ms``: how far behind and ahead of the broker's clock a record's timestamp
        may be for ``topic`` (its ``message.timestamp.before.max.ms`` and ``after.max.ms``; None: any)."""
        self.pipeline = name
        self.name = f"{name} (re-keying)"  # in the driver's log lines
        self.field = field
        self.topic = topic
        self.partitions = partitions
        self.dead_letter_topic = dead_letter_topic
        self.max_payload_bytes = max_payload_bytes
        self.dead_letter_copy_bytes = dead_letter_copy_bytes
        self.clock_ms = clock_ms
        self.max_behind_ms, self.max_ahead_ms = timestamp_window_ms
        self.key_field = KeyField(field, max_payload_bytes)
        self.delivery = Delivery(
            sink,
            pipeline=name,
            dead_letter_topic=dead_letter_topic,
            max_copy_bytes=dead_letter_copy_bytes,
            clock_ms=clock_ms,
            replacement=self._replacement,
            label=self.name,
        )

    def key_of(self, record: SourceRecord) -> bytes | Reject:
        """``streams.codecs.key_field.KeyField.key_of``: the reference for an event's key."""
        return self.key_field.key_of(record)

    def decode(self, records: Sequence[SourceRecord], skip: Sequence[int] = ()) -> Decoded:
        """Each event's key (``ids``, row for row), and a reason for each event without one; the
        events at batch indices ``skip`` are left out (``streams.flow.pipeline.Stage.decode``)."""
        now, skipped = self.clock_ms(), set(skip)
        rejects = [
            Reject(i, "TimestampOutOfRange", why)
            for i, record in enumerate(records)
            if i not in skipped and (why := self._outside_window(record.timestamp, now)) is not None
        ]
        rows: list[int] = []
        keys: list[bytes] = []
        for index, key in sorted(self.key_field.keys(records, skip=[r.index for r in rejects] + list(skip)).items()):
            if type(key) is bytes:
                rows.append(index)
                keys.append(key)
            else:
                rejects.append(key)  # type: ignore[arg-type]
        rejects.sort(key=lambda r: r.index)
        return Decoded(rows=np.asarray(rows, dtype=np.int64), ids=keys, inputs=[], rejects=rejects)

    def _outside_window(self, timestamp: int, now: int) -> str | None:
        """Why the repartition topic would refuse this timestamp, or None if it takes it."""
        if self.max_ahead_ms is not None and timestamp > now + self.max_ahead_ms - CLOCK_SKEW_MS:
            return (
                f"the event's timestamp is {(timestamp - now) / 1000:,.0f} s ahead of this worker's clock; "
                f"{self.topic} takes at most {self.max_ahead_ms / 1000:,.0f} s (message.timestamp.after.max.ms)"
            )
        if self.max_behind_ms is not None and timestamp < now - self.max_behind_ms + CLOCK_SKEW_MS:
            return (
                f"the event's timestamp is {(now - timestamp) / 1000:,.0f} s behind this worker's clock; "
                f"{self.topic} takes at most {self.max_behind_ms / 1000:,.0f} s (message.timestamp.before.max.ms)"
            )
        return None

    def featurize(self, records: Sequence[SourceRecord], decoded: Decoded) -> Decoded:
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
            headers = record.headers
            if headers:  # the producer's own sluice-source header would pass for this one
                headers = [h for h in headers if h[0] != SOURCE_HEADER]
            outputs.append(
                OutputRecord(
                    topic,
                    key,
                    # As the producer wrote it: an event read by its schema goes on in its wire format.
                    getattr(record, "wire_value", None) or record.value,
                    record.partition,
                    (*headers, (SOURCE_HEADER, position)),
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
                headers_of=header_picker("all"),
            )
        outcome = BatchOutcome(
            events=len(records),
            scored=len(decoded),
            dead_lettered=len(decoded.rejects),
            infer_seconds=time.perf_counter() - started,
            errors=errors,
        )
        return Scored(outputs, outcome)

    def _replacement(self, refused: OutputRecord, reason: str, now_ms: int) -> OutputRecord:
        """The dead letter standing in for a re-keyed event the repartition topic refused: the
        event's original position (from its header) and its bytes, bounded as for any dead letter."""
        position = dict(refused.headers).get(SOURCE_HEADER, b"").decode().rsplit(":", 2)
        if refused.topic != self.topic or len(position) != 3:  # a dead letter of this stage's own
            return self.delivery.minimal_dead_letter(refused, reason, now_ms)
        topic, partition, offset = position[0], int(position[1]), int(position[2])
        record = InputRecord(topic, partition, offset, refused.timestamp or 0, None, refused.value)
        message = f"{self.topic} refused the re-keyed event ({reason})"
        return dead_letter(
            record,
            error="OutputRefused",
            message=message,
            topic=self.dead_letter_topic,
            pipeline=self.pipeline,
            now_ms=now_ms,
            max_copy_bytes=self.dead_letter_copy_bytes,
        )
