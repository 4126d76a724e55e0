"""How an output record becomes part of a Kafka record batch: its size, its partition, the append."""

from __future__ import annotations

from aiokafka.producer.message_accumulator import BatchBuilder

from streams.records import OutputRecord

# The broker's default record limit (message.max.bytes / max.message.bytes) and the
# producer's max_request_size are both about 1 MiB.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
# A record batch's header, plus the per-record varints, attributes and timestamp delta.
_BATCH_OVERHEAD_BYTES = 61 + 32


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
