"""A ``Sink`` that produces to Kafka and reports when the broker acknowledged every record.

Records go out in hand-built batches, one per output partition (``create_batch`` /
``send_batch``), so the producer tracks one future per partition and batch instead of
one per record: per record, aiokafka's ``send()`` costs more than decoding the event.

Each output goes to its input's partition number (modulo the output topic's partition
count) and keeps its input's key. Per-key order holds, since one key's events all come
from one input partition; when both topics have the same partition count (the default
for topics sluice creates) the output is co-partitioned with its input, exactly where
the default key partitioner would have put it if the input was produced with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from aiokafka import AIOKafkaProducer

from streams.records import OutputRecord


class KafkaSink:
    """The producer should be idempotent (``enable_idempotence=True``) so that retries keep
    per-partition order and never duplicate within a session."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partition_counts: dict[str, int] = {}

    async def _partitions(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await self.producer.partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        by_partition: dict[tuple[str, int], list[OutputRecord]] = {}
        pending: list[asyncio.Future[object]] = []
        for record in records:
            if record.partition is None:
                # No input partition to follow: let the producer's key partitioner decide.
                pending.append(await self.producer.send(record.topic, record.value, key=record.key))
                continue
            partition = record.partition % await self._partitions(record.topic)
            by_partition.setdefault((record.topic, partition), []).append(record)
        for (topic, partition), group in by_partition.items():
            batch = self.producer.create_batch()
            for record in group:
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                    # Full: ship it and start the next one (order within the partition holds).
                    batch.close()
                    pending.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    batch.append(key=record.key, value=record.value, timestamp=None)
            batch.close()
            pending.append(await self.producer.send_batch(batch, topic, partition=partition))
        return _all_acknowledged(pending)


async def _all_acknowledged(pending: list[asyncio.Future[object]]) -> None:
    if pending:
        await asyncio.gather(*pending)
