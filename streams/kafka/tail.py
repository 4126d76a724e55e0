"""Following a topic's partitions without a consumer group, from their end, their beginning or a
point in time: what ``sluice watch`` reads. A fetch that cannot be decoded is read around, each
record that cannot be decoded standing as an ``UndecodableRecord`` at its position
(``streams.kafka.undecodable``).
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.undecodable import UNDECODABLE, reread_around_undecodable
from streams.records import Partition, SourceRecord


class Tail:
    """Reads ``partitions`` with ``consumer`` (started, with no group), from where ``seek`` puts them."""

    def __init__(self, consumer: AIOKafkaConsumer, partitions: Sequence[Partition]) -> None:
        self.consumer = consumer
        self._tps = [TopicPartition(*p) for p in partitions]
        # Per partition: the first offset not handed out yet, to go back to after a fetch that
        # cannot be decoded (known from the first read on).
        self._upcoming: dict[TopicPartition, int] | None = None

    async def seek(self, *, from_beginning: bool = False, since_ms: int | None = None) -> None:
        """Start at each partition's end; or its beginning; or, with ``since_ms``, at its first
        record appended at that time or later (its end if it has none)."""
        consumer, tps = self.consumer, self._tps
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        if from_beginning:
            # Explicit offsets: seek_to_beginning can lose a race with aiokafka's own offset reset.
            beginning = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, beginning[tp])
        elif since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp, at in found.items():
                if at is not None:  # None: nothing that recent in this partition; stay at its end
                    consumer.seek(tp, at.offset)

    async def next_batch(self, max_records: int | None, *, timeout_ms: int, reread_room: int) -> list[SourceRecord]:
        """Up to ``max_records`` (None: any number) records, waiting at most ``timeout_ms`` for
        some; each partition's in order. After a fetch that cannot be decoded, each partition is
        read again on its own from what was not handed out yet, up to ``reread_room`` records."""
        if self._upcoming is None:
            self._upcoming = {tp: await self.consumer.position(tp) for tp in self._tps}
        try:
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except UNDECODABLE:
            # A damaged batch: go back to what was not handed out yet and read around it.
            fetched = await reread_around_undecodable(self.consumer, self._upcoming, reread_room, timeout_ms)
        batch: list[SourceRecord] = []
        for tp, records in fetched.items():
            if records:
                self._upcoming[tp] = records[-1].offset + 1
            batch += records
        return batch
