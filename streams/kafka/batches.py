"""How an output record becomes part of a Kafka record batch: its size, its partition, the append."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from itertools import compress, repeat
from operator import eq, itemgetter

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.records import OutputRecord

# The broker's default record limit (message.max.bytes / max.message.bytes) and the
# producer's max_request_size are both about 1 MiB.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
# A record batch's header, plus the per-record varints, attributes and timestamp delta.
_BATCH_OVERHEAD_BYTES = 61 + 32
# OutputRecord's fields by position: map() over them runs in C, where a loop would run once per event.
_TOPIC, _KEY, _VALUE, _PARTITION, _HEADERS, _TO_PARTITION = (itemgetter(i) for i in range(6))
# What an output without headers appends: aiokafka wants a list and only reads it.
_NO_HEADERS: list[tuple[str, bytes]] = []


def target_partition(record: OutputRecord, count: int) -> int | None:
    """Where ``record`` goes among ``count`` partitions: its new key's (re-keyed), its input's
    number, or None (no input to follow: the producer's key partitioner decides)."""
    if record.to_partition is not None:
        return record.to_partition % count
    return None if record.partition is None else record.partition % count


def record_size(record: OutputRecord) -> int:
    """An upper bound of the bytes ``record`` takes alone in a record batch."""
    headers = sum(len(name.encode()) + len(value) + 10 for name, value in record.headers) if record.headers else 0
    return len(record.key or b"") + len(record.value) + headers + _BATCH_OVERHEAD_BYTES


def append(batch: BatchBuilder, record: OutputRecord) -> object:
    """Add ``record`` to ``batch``; None if the batch is full."""
    return batch.append(key=record.key, value=record.value, timestamp=record.timestamp, headers=list(record.headers))


def oversized(records: Sequence[OutputRecord], limit_of: Callable[[str], int]) -> list[tuple[OutputRecord, str]]:
    """The records over their topic's size limit, each with the reason.

    Checked record by record only when the batch's longest key and longest value together,
    with no headers anywhere, could exceed the smallest limit: outputs are far smaller than
    a megabyte, so a batch is usually cleared at once."""
    if records and not any(map(_HEADERS, records)):
        keys = max(map(len, filter(None, map(_KEY, records))), default=0)
        longest = max(map(len, map(_VALUE, records))) + keys + _BATCH_OVERHEAD_BYTES
        if longest <= min(map(limit_of, set(map(_TOPIC, records)))):
            return []
    return [
        (record, f"the record is over {limit_of(record.topic)} bytes, the topic's limit")
        for record in records
        if record_size(record) > limit_of(record.topic)
    ]


def by_partition(
    records: Sequence[OutputRecord], counts: Mapping[str, int]
) -> dict[tuple[str, int | None], list[OutputRecord]]:
    """The records by (topic, target partition), each group in the order given (per-key order).

    Outputs follow their inputs' partitions and a batch holds a few: one pass per partition
    (in C) picks its records, where a dict lookup per record cost more than the rest of the send."""
    topics = set(map(_TOPIC, records))
    if len(topics) != 1 or any(p is not None for p in set(map(_TO_PARTITION, records))):
        return _by_partition_each(records, counts)
    (topic,) = topics
    count = counts[topic]
    partitions = list(map(_PARTITION, records))
    present = list(dict.fromkeys(partitions))  # in order of first appearance, as the loop below makes groups
    targets = [None if partition is None else partition % count for partition in present]
    if len(present) == 1:
        return {(topic, targets[0]): list(records)}
    if len(set(targets)) < len(targets):
        # Two input partitions share an output partition: their records interleave as given.
        return _by_partition_each(records, counts)
    return {
        (topic, target): list(compress(records, map(eq, partitions, repeat(partition))))
        for partition, target in zip(present, targets, strict=True)
    }


def _by_partition_each(
    records: Sequence[OutputRecord], counts: Mapping[str, int]
) -> dict[tuple[str, int | None], list[OutputRecord]]:
    groups: dict[tuple[str, int | None], list[OutputRecord]] = {}
    for record in records:
        groups.setdefault((record.topic, target_partition(record, counts[record.topic])), []).append(record)
    return groups


def fill(batch: BatchBuilder, records: Sequence[OutputRecord], start: int) -> int:
    """Append ``records[start:]`` to ``batch`` until it is full: the index of the first left out
    (``len(records)`` when all went in). An empty batch always takes its first record."""
    add = batch.append
    for i in range(start, len(records)):
        _, key, value, _, headers, _, timestamp = records[i]
        if add(key=key, value=value, timestamp=timestamp, headers=list(headers) if headers else _NO_HEADERS) is None:
            return i
    return len(records)


async def send_in_batches(
    producer: AIOKafkaProducer, records: list[OutputRecord], topic: str, partition: int
) -> list[tuple[list[OutputRecord], asyncio.Future[object]]]:
    """Hand ``records`` to the producer for ``topic``'s ``partition`` in as many record batches as
    they fill, in order (order within the partition holds): each batch's records and the future
    of its acknowledgement."""
    sent = []
    start = 0
    while start < len(records):
        batch = producer.create_batch()
        stop = fill(batch, records, start)
        batch.close()
        sent.append((records[start:stop], await producer.send_batch(batch, topic, partition=partition)))
        start = stop
    return sent
