"""Reading past record batches the consumer cannot decode, one partition at a time.

aiokafka's ``getmany`` raises, for a fetched record batch it cannot turn into records (a CRC
that does not match, bytes the codec cannot decompress, a codec it has no library for),
naming no partition, and may drop what it had already taken from other partitions. A
reader that meets it rewinds to what it has not yet handed out, then reads each partition
with ``read_past_undecodable``: each record that cannot be decoded becomes an
``UndecodableRecord`` at its position, which the pipeline dead-letters like any bad event,
so every input is still accounted for and the reader goes on after it.
"""

from __future__ import annotations

import gzip
import logging
import time
import zlib
from collections.abc import Mapping

import cramjam
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from streams.records import SourceRecord, UndecodableRecord

log = logging.getLogger(__name__)

# What aiokafka raises, from inside getmany, for a fetched record batch it cannot turn into
# records: its own errors, or the codec library's (snappy, lz4 and zstd through cramjam; gzip).
UNDECODABLE = (
    CorruptRecordException,
    UnsupportedCodecError,
    cramjam.DecompressionError,
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    # A header key that is not UTF-8 (the protocol says strings; some clients send any bytes).
    UnicodeDecodeError,
)


async def read_past_undecodable(
    consumer: AIOKafkaConsumer, tp: TopicPartition, room: int, poll_ms: int
) -> list[SourceRecord]:
    """Up to ``room`` records of ``tp`` from where it stands, with an ``UndecodableRecord`` in
    place of each record that cannot be decoded."""
    try:
        fetched = await consumer.getmany(tp, timeout_ms=poll_ms, max_records=room)
        return list(fetched.get(tp, []))
    except UNDECODABLE:
        pass
    # Fails again with a fresh fetch: one record at a time from where the partition stands
    # (a failed getmany does not move it; seeking drops what aiokafka holds of the bad fetch).
    consumer.seek(tp, await consumer.position(tp))
    records: list[SourceRecord] = []
    skipped: list[int] = []
    error: Exception | None = None
    while len(records) < room:
        position = await consumer.position(tp)
        try:
            fetched = await consumer.getmany(tp, timeout_ms=poll_ms, max_records=1)
        except UNDECODABLE as exc:
            skipped.append(position)
            error = exc
            records.append(UndecodableRecord(tp.topic, tp.partition, position, time.time_ns() // 1_000_000, repr(exc)))
            consumer.seek(tp, position + 1)
            continue
        if not fetched:
            break
        records += fetched.get(tp, [])
        if skipped:
            break  # past the undecodable records: the next fetch goes on at full speed
    if skipped:
        log.error(
            "%s[%d] offsets %d..%d (%d records): cannot be decoded (%r); dead-lettered, consuming goes on",
            tp.topic,
            tp.partition,
            skipped[0],
            skipped[-1],
            len(skipped),
            error,
        )
    return records


async def reread_around_undecodable(
    consumer: AIOKafkaConsumer, upcoming: Mapping[TopicPartition, int], room: int, poll_ms: int
) -> dict[TopicPartition, list[SourceRecord]]:
    """After a ``getmany`` that raised one of ``UNDECODABLE``: each partition back to ``upcoming``
    (its first offset not yet handed out; the failed call may have moved it past records it then
    dropped) and read on its own, with ``read_past_undecodable``."""
    for tp, offset in upcoming.items():
        consumer.seek(tp, offset)
    return {tp: await read_past_undecodable(consumer, tp, room, poll_ms) for tp in upcoming}
