"""The live source: a consumer-group member that hands out whole batches and commits after them.

Consumes with aiokafka's batch API (``getmany``) rather than per-event iteration: the
per-event cost of a stream abstraction is what a batching server cannot afford. Offsets
are committed explicitly, never automatically, and a rebalance waits for the batch in
flight so revoked partitions are committed before another worker takes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError

from streams.records import SourceRecord

log = logging.getLogger(__name__)


def next_offsets(records: Sequence[SourceRecord]) -> dict[TopicPartition, int]:
    """The offsets to commit after ``records``: one past the last record of each partition."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if record.offset >= offsets.get(tp, -1):
            offsets[tp] = record.offset + 1
    return offsets


class _FinishBatchOnRevoke(ConsumerRebalanceListener):
    def __init__(self, source: KafkaBatchSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Taking the lock waits for the batch in flight to be emitted and committed.
        async with self.source.in_flight:
            if revoked:
                log.info("partitions revoked: %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info(
            "partitions assigned: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "none",
        )


class KafkaBatchSource:
    def __init__(
        self, consumer: AIOKafkaConsumer, topics: Sequence[str], *, max_records: int, poll_ms: int
    ) -> None:
        self.consumer = consumer
        self.topics = list(topics)
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.in_flight = asyncio.Lock()

    def subscribe(self) -> None:
        self.consumer.subscribe(self.topics, listener=_FinishBatchOnRevoke(self))

    async def next_batch(self) -> list[SourceRecord]:
        """Up to ``max_records`` records, partition by partition in offset order; empty on timeout."""
        fetched = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
        batch: list[SourceRecord] = []
        for records in fetched.values():
            batch.extend(records)
        return batch

    async def commit(self, records: Sequence[SourceRecord]) -> bool:
        """Commit past ``records``; False if the group moved on (the records will be redelivered)."""
        offsets = next_offsets(records)
        if not offsets:
            return True
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("commit failed after a rebalance; these records will be scored again: %s", exc)
            return False
        return True
