"""A small keyed topic read as a log of decisions: from its beginning up to the end offsets seen
when the read begins (``catch_up``: what was decided before this reader started), then whatever
arrives after (``follow``); and one record appended, acknowledged by every in-sync replica
(``append``). What ``app.decision_log`` keeps model decisions in.

No consumer group: every reader reads every record, and none moves anyone's offsets. A record
that cannot be decoded is handed on as an ``UndecodableRecord`` at its position
(``streams.kafka.tail``), for the caller to skip with a word.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import DeliveryFailed
from streams.kafka.tail import Tail
from streams.records import Partition, SourceRecord

# Records read again one by one around a fetch that cannot be decoded.
REREAD_ROOM = 100


class KeyedLog:
    """``topic``'s ``partitions`` read with ``consumer`` (started, no group), written with a producer
    ``new_producer`` makes (``acks="all"``), started at the first write: most readers never write."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        partitions: Sequence[int],
        new_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self.consumer = consumer
        self.new_producer = new_producer
        self.producer: AIOKafkaProducer | None = None
        self.topic = topic
        self._tps = [TopicPartition(topic, p) for p in partitions]
        self._tail = Tail(consumer, [Partition(topic, p) for p in partitions])
        self._caught_up = False
        self._arrived: list[SourceRecord] = []

    async def catch_up(self, *, poll_ms: int = 500) -> list[SourceRecord]:
        """Every record from each partition's beginning up to the end offset it had when this
        began, in each partition's order."""
        await self._tail.seek(from_beginning=True)
        end = await self.consumer.end_offsets(self._tps)
        records: list[SourceRecord] = []
        # A compacted partition may end in a gap (its last records deleted): the position, not the
        # last record's offset, says when it is read to its end.
        while await self._short_of(end):
            for record in await self._tail.next_batch(None, timeout_ms=poll_ms, reread_room=REREAD_ROOM):
                # Appended since the snapshot (another partition still being read): ``follow``'s.
                past = record.offset >= end[TopicPartition(record.topic, record.partition)]
                (self._arrived if past else records).append(record)
        self._caught_up = True
        return records

    async def _short_of(self, end: dict[TopicPartition, int]) -> bool:
        return any([await self.consumer.position(tp) < end[tp] for tp in self._tps])

    async def follow(self, *, poll_ms: int = 1000) -> list[SourceRecord]:
        """The records appended since the last read (waiting up to ``poll_ms`` for some)."""
        if not self._caught_up:
            raise RuntimeError("KeyedLog.follow before catch_up: the records before it would be skipped")
        if self._arrived:
            arrived, self._arrived = self._arrived, []
            return arrived
        return await self._tail.next_batch(None, timeout_ms=poll_ms, reread_room=REREAD_ROOM)

    async def append(self, key: bytes, value: bytes | None, *, timeout_s: float = 30.0) -> int:
        """Write one record and wait until every in-sync replica has it; returns its offset.
        ``DeliveryFailed`` (the client's error as its cause) when it is not acknowledged in time."""
        if self.new_producer is None:
            raise RuntimeError(f"this reader of {self.topic} has no producer to write with")
        try:
            if self.producer is None:
                producer = self.new_producer()
                try:
                    await asyncio.wait_for(producer.start(), timeout_s)
                except BaseException:
                    await producer.stop()
                    raise
                self.producer = producer
            sent = await asyncio.wait_for(self.producer.send_and_wait(self.topic, value, key=key), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryFailed(f"{self.topic} did not take the record within {timeout_s:.0f}s: {exc!r}") from exc
        return int(sent.offset)

    async def close(self) -> None:
        """Stop the producer, if a write started one; the consumer is the caller's."""
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()
